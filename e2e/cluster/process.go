package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a child process of the cluster: a control-plane component or
// something a NodeBackend started. Its stdout and stderr go to Log.
type Process struct {
	Name string
	Log  string

	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // cmd.Wait's result, valid after done

	mu       sync.Mutex
	stopping bool // Stop was called: an exit is expected, not a failure
}

// startProcess starts bin in its own process group with output to logPath
// (truncated: one log per run).
func startProcess(name, logPath, bin string, env, args []string) (*Process, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("start %s: binary: %w", name, err)
	}
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: open log: %w", name, err)
	}
	fmt.Fprintf(f, "# %s %s\n", bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Own process group: Stop signals the whole group, so anything the
		// component forks goes too, and a Ctrl-C in the launcher's terminal
		// reaches only the launcher, which then stops children in order.
		Setpgid: true,
		// If the launcher dies without Stop (SIGKILL, a test binary's panic
		// or timeout), the kernel kills the child instead of leaving an
		// apiserver running with nobody to stop it.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// PID is the process id (and process group id).
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitErr is how the process ended (nil for exit 0); valid after Done.
func (p *Process) ExitErr() error { return p.err }

func (p *Process) expectedExit() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopping
}

// Stop sends SIGTERM to the process group, and SIGKILL after grace. It
// returns once the process has been reaped.
func (p *Process) Stop(grace time.Duration) {
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	pgid := p.PID()
	select {
	case <-p.done:
	default:
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		t := time.NewTimer(grace)
		select {
		case <-p.done:
			t.Stop()
		case <-t.C:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
	}
	// The leader is gone; anything it forked into its group goes too. ESRCH
	// (an empty group) is the normal case.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// exitError describes an unexpected exit with the end of the log, which
// is nearly always where the reason is.
func (p *Process) exitError() error {
	return fmt.Errorf("%s exited: %v\n--- last lines of %s ---\n%s", p.Name, p.err, p.Log, tail(p.Log, 15))
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// Alive reports whether a process with this pid exists (signal 0 probes
// without signalling). A zombie counts as alive until reaped.
func Alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
