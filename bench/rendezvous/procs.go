// Package rendezvous runs rendezvous participants as real processes on
// loopback, muster's (bin/coordinator, bin/agent) and PyTorch's (c10d
// rendezvous, torchrun), and reads the wall-clock timestamps they print.
// Its benchmarks compare the two; bench/failure uses the same processes to
// measure failure detection.
package rendezvous

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/muster-dev/muster/bench/procstat"
	"github.com/muster-dev/muster/coordinator/testcoord"
	"github.com/muster-dev/muster/e2e/e2etest"
	"github.com/muster-dev/muster/internal/freeport"
)

// Proc is a process started in a process group of its own, so that it is
// killed with everything it started (torchrun's workers, forked
// participants). Its stdout and stderr are kept as lines.
type Proc struct {
	Cmd *exec.Cmd
	// Started is the wall-clock time just before the process was started.
	Started time.Time

	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced on each new line and at exit
	eof     chan struct{} // closed when the output ends (every writer exited)
	done    chan struct{}
	exited  time.Time
}

// Start starts name with args (and env added to this process's) and kills
// its process group when the benchmark ends.
func Start(tb testing.TB, env []string, name string, args ...string) *Proc {
	tb.Helper()
	p := &Proc{changed: make(chan struct{}), eof: make(chan struct{}), done: make(chan struct{})}
	p.Cmd = exec.Command(name, args...)
	p.Cmd.Env = append(os.Environ(), env...)
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Our own pipe rather than an io.Writer: Wait then returns when the
	// process exits, not when every child that inherited the pipe has.
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	p.Cmd.Stdout, p.Cmd.Stderr = w, w
	p.Started = time.Now()
	err = p.Cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		tb.Fatalf("start %s: %v", name, err)
	}
	go p.read(r)
	go func() {
		p.Cmd.Wait()
		p.mu.Lock()
		p.exited = time.Now()
		p.mu.Unlock()
		close(p.done)
		p.notify()
	}()
	tb.Cleanup(func() {
		p.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			tb.Errorf("%s did not exit 10s after SIGKILL to its process group", name)
		}
	})
	return p
}

func (p *Proc) read(r *os.File) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		p.mu.Lock()
		p.lines = append(p.lines, sc.Text())
		p.mu.Unlock()
		p.notify()
	}
	// Lines read before EOF are all in p.lines: a waiter that sees eof
	// closed has seen them.
	p.mu.Lock()
	close(p.eof)
	p.mu.Unlock()
}

func (p *Proc) notify() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.changed)
	p.changed = make(chan struct{})
}

// Kill sends SIGKILL to the process group.
func (p *Proc) Kill() {
	syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
}

// CPU is the user+system CPU time the process (not its children) used so
// far; 0 when it cannot be read.
func (p *Proc) CPU() time.Duration { return procstat.CPU(p.Cmd.Process.Pid) }

// Output is everything the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited returns when the process exited (zero while it runs) and its code.
func (p *Proc) Exited() (time.Time, int) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.exited, p.Cmd.ProcessState.ExitCode()
	default:
		return time.Time{}, -1
	}
}

// Line waits until a line at index from or later contains substr and
// returns it with its index. It fails when deadline passes or the process
// exits first.
func (p *Proc) Line(from int, substr string, deadline time.Time) (string, int, error) {
	for ended := false; ; {
		p.mu.Lock()
		for i := from; i < len(p.lines); i++ {
			if strings.Contains(p.lines[i], substr) {
				l := p.lines[i]
				p.mu.Unlock()
				return l, i, nil
			}
		}
		from = max(from, len(p.lines))
		changed := p.changed
		p.mu.Unlock()
		if ended {
			return "", 0, fmt.Errorf("no %q from %s before its output ended:\n%s", substr, p.name(), tail(p.Output()))
		}
		select {
		case <-changed:
		case <-p.eof:
			ended = true // one more look at the last lines
		case <-time.After(time.Until(deadline)):
			return "", 0, fmt.Errorf("no %q from %s by %s:\n%s", substr, p.name(), deadline.Format(time.StampMilli), tail(p.Output()))
		}
	}
}

// Lines returns how many lines the process printed so far.
func (p *Proc) Lines() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// WaitExit waits until the process exits and returns its exit code.
func (p *Proc) WaitExit(deadline time.Time) (int, error) {
	select {
	case <-p.done:
		_, code := p.Exited()
		return code, nil
	case <-time.After(time.Until(deadline)):
		return -1, fmt.Errorf("%s still running at %s:\n%s", p.name(), deadline.Format(time.StampMilli), tail(p.Output()))
	}
}

func (p *Proc) name() string { return strings.Join(p.Cmd.Args, " ") }

func tail(s string) string {
	if len(s) > 4000 {
		return "..." + s[len(s)-4000:]
	}
	return s
}

var slogTime = regexp.MustCompile(`\btime=(\S+)`)

// SlogTime is the time= field of a line the agent logged (milliseconds).
func SlogTime(line string) (time.Time, error) {
	m := slogTime.FindStringSubmatch(line)
	if m == nil {
		return time.Time{}, fmt.Errorf("no time= in %q", line)
	}
	return time.Parse(time.RFC3339Nano, m[1])
}

// UnixField is field i (space-separated) of line read as Unix time:
// nanoseconds when it is an integer, seconds when it has a decimal point.
func UnixField(line string, i int) (time.Time, error) {
	f := strings.Fields(line)
	if i >= len(f) {
		return time.Time{}, fmt.Errorf("no field %d in %q", i, line)
	}
	if strings.Contains(f[i], ".") {
		s, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("field %d of %q: %w", i, line, err)
		}
		return time.Unix(0, int64(s*1e9)), nil
	}
	ns, err := strconv.ParseInt(f[i], 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("field %d of %q: %w", i, line, err)
	}
	return time.Unix(0, ns), nil
}

// Bins is the directory holding bin/coordinator and bin/agent: $MUSTER_BIN
// (make bench builds them first), or this tree's, built once.
func Bins(tb testing.TB) string {
	tb.Helper()
	if d := os.Getenv("MUSTER_BIN"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return e2etest.MusterBins(tb, filepath.Join(filepath.Dir(file), "..", ".."))
}

// TorchPython is a Python with torch.distributed ($TORCH_PYTHON, default
// Debian's /usr/bin/python3); the benchmark is skipped without one.
func TorchPython(tb testing.TB) string {
	tb.Helper()
	py := os.Getenv("TORCH_PYTHON")
	if py == "" {
		py = "/usr/bin/python3"
	}
	if err := exec.Command(py, "-c", "import torch.distributed").Run(); err != nil {
		tb.Skipf("%s has no torch.distributed (%v): apt-get install -y python3-torch (make deps)", py, err)
	}
	return py
}

// Testdata is the path of a file in this package's testdata directory.
func Testdata(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "testdata", name)
}

// FreeAddr returns a host:port on host that was free a moment ago, below
// the kernel's ephemeral range (see freeport.Pick: a port the kernel hands
// out for ":0" may be taken by any outgoing connection before the server
// that was given it binds it).
func FreeAddr(tb testing.TB, host string) string {
	tb.Helper()
	ports, err := freeport.PickOn(host, 1)
	if err != nil {
		tb.Fatal(err)
	}
	return net.JoinHostPort(host, strconv.Itoa(ports[0]))
}

// Coordinator runs bin/coordinator (embedded etcd) on loopback and returns
// its address once it answers.
func Coordinator(tb testing.TB, extra ...string) string {
	tb.Helper()
	addr, _ := coordinatorProc(tb, extra...)
	return addr
}

// CoordinatorOn is Coordinator listening on host (its etcd stays on
// loopback): for members in network namespaces of their own, which reach
// the host by another address.
func CoordinatorOn(tb testing.TB, host string, extra ...string) (string, *Proc) {
	tb.Helper()
	return coordinatorProcOn(tb, host, extra...)
}

func coordinatorProc(tb testing.TB, extra ...string) (string, *Proc) {
	tb.Helper()
	return coordinatorProcOn(tb, "127.0.0.1", extra...)
}

func coordinatorProcOn(tb testing.TB, host string, extra ...string) (string, *Proc) {
	tb.Helper()
	addr, p := startCoordinatorOn(tb, host, extra...)
	if err := testcoord.WaitServing(addr, 30*time.Second, p.Done()); err != nil {
		tb.Fatalf("%v\n%s", err, p.Output())
	}
	return addr, p
}

func startCoordinator(tb testing.TB, extra ...string) (string, *Proc) {
	tb.Helper()
	return startCoordinatorOn(tb, "127.0.0.1", extra...)
}

func startCoordinatorOn(tb testing.TB, host string, extra ...string) (string, *Proc) {
	tb.Helper()
	addr := FreeAddr(tb, host)
	args := append([]string{"--listen", addr, "--data-dir", tb.TempDir(),
		"--etcd-listen-client", FreeAddr(tb, "127.0.0.1"), "--etcd-listen-peer", FreeAddr(tb, "127.0.0.1")}, extra...)
	return addr, Start(tb, nil, filepath.Join(Bins(tb), "coordinator"), args...)
}

// Agents starts n agents of group on 127.0.0.2, .3, ... (member m<i>,
// ordinal i), each running command, and returns them in ordinal order.
func Agents(tb testing.TB, coord, group string, n int, agentArgs []string, command ...string) []*Proc {
	tb.Helper()
	return AgentsEach(tb, coord, group, n, func(int) []string { return agentArgs }, command...)
}

// AgentsEach is Agents with each agent's own extra arguments (agentArgs(i)
// for member m<i>: its certificate, say).
func AgentsEach(tb testing.TB, coord, group string, n int, agentArgs func(i int) []string, command ...string) []*Proc {
	tb.Helper()
	agent := filepath.Join(Bins(tb), "agent")
	ps := make([]*Proc, n)
	for i := range ps {
		args := append([]string{"run", "--coordinator", coord, "--group", group, "--size", strconv.Itoa(n),
			"--member-id", fmt.Sprintf("m%d", i), "--address", Loopback(i), "--ordinal", strconv.Itoa(i)}, agentArgs(i)...)
		ps[i] = Start(tb, nil, agent, append(append(args, "--"), command...)...)
	}
	return ps
}

// Loopback is the address of host i: 127.0.0.2 onwards.
func Loopback(i int) string {
	return fmt.Sprintf("127.0.%d.%d", (i+2)/250, (i+2)%250)
}

// Memory is the process's resident memory now (VmRSS) and at its peak
// (VmHWM), in bytes; 0 for what cannot be read.
func (p *Proc) Memory() (rss, peak int64) { return procstat.Memory(p.Cmd.Process.Pid) }
