// Package process runs and supervises one runtime process tree: it starts
// the command in its own process group, keeps the tail of its stderr for
// failure reports, forwards signals and stops the whole tree.
package process

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Result is how a process ended.
type Result struct {
	// Code is the exit code; a process killed by a signal gets 128+signal,
	// as shells report it; a command that could not start gets 127.
	Code int
	// Signal names the signal that killed it, if any.
	Signal string
	// Tail holds the last lines the process wrote to stderr.
	Tail string
	// Err is a start failure.
	Err error
}

// Reason describes the ending in one line, for logs and reports.
func (r Result) Reason() string {
	var b strings.Builder
	switch {
	case r.Err != nil:
		fmt.Fprintf(&b, "could not start: %v", r.Err)
	case r.Signal != "":
		fmt.Fprintf(&b, "killed by %s", r.Signal)
	default:
		fmt.Fprintf(&b, "exit code %d", r.Code)
	}
	if t := strings.TrimSpace(r.Tail); t != "" {
		b.WriteString("; stderr tail: ")
		b.WriteString(t)
	}
	return b.String()
}

// Process is a started command.
type Process struct {
	cmd    *exec.Cmd
	done   chan struct{}
	result Result
	tail   *tailWriter
}

// Start runs argv with env appended to the current environment; the
// process's output goes to stdout and stderr.
func Start(argv, env []string, stdout, stderr io.Writer) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("start runtime: empty command")
	}
	tail := &tailWriter{max: 20}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = stdout
	cmd.Stderr = io.MultiWriter(stderr, tail)
	// Its own process group, so that stopping it stops whatever it spawned
	// (torchrun's workers, a shell's children).
	// Pdeathsig: if the agent itself is killed, its runtime does not live
	// on as an orphan holding GPUs and ports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start runtime %q: %w", argv[0], err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{}), tail: tail}
	go p.wait()
	return p, nil
}

func (p *Process) wait() {
	err := p.cmd.Wait()
	r := Result{}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.Signal = ws.Signal().String()
			r.Code = 128 + int(ws.Signal())
		} else {
			r.Code = ee.ExitCode()
		}
	default:
		r.Code, r.Err = 127, err
	}
	// Whatever the leader left behind in its group goes too.
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	r.Tail = p.tail.String()
	p.result = r
	close(p.done)
}

// Pid is the process id (and process group id).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Result is valid once Done is closed.
func (p *Process) Result() Result { <-p.done; return p.result }

// Signal sends sig to the process group.
func (p *Process) Signal(sig syscall.Signal) {
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
}

// Stop sends SIGTERM to the process group, then SIGKILL after grace, and
// waits for the exit.
func (p *Process) Stop(grace time.Duration) Result {
	select {
	case <-p.done:
		return p.result
	default:
	}
	p.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.Signal(syscall.SIGKILL)
		<-p.done
	}
	return p.result
}

// tailWriter keeps the last max lines written to it.
type tailWriter struct {
	mu    sync.Mutex
	max   int
	lines []string
	part  string
}

func (t *tailWriter) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.part + string(b)
	parts := strings.Split(s, "\n")
	t.part = parts[len(parts)-1]
	if len(t.part) > 4096 {
		t.part = t.part[len(t.part)-4096:]
	}
	for _, l := range parts[:len(parts)-1] {
		if len(l) > 512 {
			l = l[:512] + "..."
		}
		t.lines = append(t.lines, l)
	}
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
	return len(b), nil
}

func (t *tailWriter) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := t.lines
	if t.part != "" {
		lines = append(append([]string(nil), lines...), t.part)
	}
	return strings.Join(lines, "\n")
}
