// Package e2e holds end-to-end tests that run muster's real binaries as
// separate processes, the way a user runs them.
package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/muster-dev/muster/coordinator/testcoord"
	"github.com/muster-dev/muster/internal/freeport"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// bins returns the directory holding bin/coordinator and bin/agent: the
// one MUSTER_BIN names (make test builds them first), or a fresh build.
func bins(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if d := os.Getenv("MUSTER_BIN"); d != "" {
			binDir = d
			return
		}
		dir, err := os.MkdirTemp("", "muster-bin-")
		if err != nil {
			buildErr = err
			return
		}
		for _, c := range []string{"coordinator", "agent"} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(dir, c), "../"+c+"/cmd/"+c).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", c, err, out)
				return
			}
		}
		binDir = dir
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// torchPython returns a Python with torch.distributed. In CI it must exist
// (.ci/run installs it); elsewhere the test is skipped with the fix.
func torchPython(t *testing.T) string {
	t.Helper()
	py := os.Getenv("TORCH_PYTHON")
	if py == "" {
		py = "/usr/bin/python3"
	}
	if err := exec.Command(py, "-c", "import torch.distributed").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s has no torch.distributed (%v); .ci/run must install python3-torch", py, err)
		}
		t.Skipf("%s has no torch.distributed: apt-get install -y python3-torch (or make deps)", py)
	}
	return py
}

func freeAddr(t *testing.T) string {
	t.Helper()
	return freeAddrOn(t, "127.0.0.1")
}

// freeAddrOn returns a host:port on host that was free a moment ago,
// below the kernel's ephemeral range (see freeport.Pick).
func freeAddrOn(t *testing.T, host string) string {
	t.Helper()
	ports, err := freeport.PickOn(host, 1)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(host, strconv.Itoa(ports[0]))
}

// proc is a started binary with its combined output.
type proc struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	mu   *sync.Mutex
	done chan struct{}
	err  error
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{out: &bytes.Buffer{}, mu: &sync.Mutex{}, done: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	w := lockedWriter{p.mu, p.out}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				p.cmd.Process.Kill()
				<-p.done
			}
		}
		if t.Failed() {
			t.Logf("output of %s:\n%s", strings.Join(p.cmd.Args, " "), p.output())
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		t.Fatalf("%s still running after %s; output:\n%s", strings.Join(p.cmd.Args, " "), d, p.output())
		return -1
	}
}

// waitOutput waits until the output contains s.
func (p *proc) waitOutput(t *testing.T, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(p.output(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the output of %s within %s:\n%s", s, p.cmd.Args[0], d, p.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitFile waits until path exists, failing early if the process exits.
func (p *proc) waitFile(t *testing.T, path string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before %s appeared:\n%s", p.cmd.Args[0], path, p.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within %s; output of %s:\n%s", path, d, p.cmd.Args[0], p.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startCoordinator runs bin/coordinator and waits until it answers.
func startCoordinator(t *testing.T, extra ...string) string {
	t.Helper()
	return startCoordinatorOn(t, "127.0.0.1", extra...)
}

// startCoordinatorOn runs bin/coordinator serving on host and waits until
// it answers.
func startCoordinatorOn(t *testing.T, host string, extra ...string) string {
	t.Helper()
	addr, _ := coordinatorProc(t, host, extra...)
	return addr
}

// coordinatorProc is startCoordinatorOn returning the process too.
func coordinatorProc(t *testing.T, host string, extra ...string) (string, *proc) {
	t.Helper()
	addr := freeAddrOn(t, host)
	args := append([]string{"--listen", addr, "--data-dir", t.TempDir(),
		"--etcd-listen-client", freeAddr(t), "--etcd-listen-peer", freeAddr(t)}, extra...)
	p := start(t, filepath.Join(bins(t), "coordinator"), args...)
	if err := testcoord.WaitServing(addr, 30*time.Second, p.done); err != nil {
		t.Fatalf("%v\n%s", err, p.output())
	}
	return addr, p
}

func testdata(t *testing.T, name string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "testdata", name)
}

// runGroup starts n agents on 127.0.0.2.. and waits for all of them.
func runGroup(t *testing.T, coord, group string, n int, agentArgs []string, command ...string) []*proc {
	t.Helper()
	var ps []*proc
	for i := 0; i < n; i++ {
		args := append([]string{"run", "--coordinator", coord, "--group", group, "--size", fmt.Sprint(n),
			"--member-id", fmt.Sprintf("host-%d", i), "--address", fmt.Sprintf("127.0.0.%d", i+2), "--ordinal", fmt.Sprint(i)}, agentArgs...)
		args = append(append(args, "--"), command...)
		ps = append(ps, start(t, filepath.Join(bins(t), "agent"), args...))
	}
	for i, p := range ps {
		if code := p.wait(t, 3*time.Minute); code != 0 {
			t.Fatalf("agent %d exited %d:\n%s", i, code, p.output())
		}
	}
	return ps
}

func TestTorchAllReduceOnFourHosts(t *testing.T) {
	py := torchPython(t)
	coord := startCoordinator(t)
	ps := runGroup(t, coord, "torch", 4, nil, py, testdata(t, "allreduce.py"))
	for i, p := range ps {
		want := fmt.Sprintf("rank %d/4 generation 0: all_reduce ok, sum 10", i)
		if !strings.Contains(p.output(), want) {
			t.Errorf("agent %d output lacks %q:\n%s", i, want, p.output())
		}
	}
}

func TestTorchGroupHealsWhenOneRankDies(t *testing.T) {
	py := torchPython(t)
	coord := startCoordinator(t)
	// Rank 2 dies before init in generation 0; the other three hang in
	// init_process_group until muster restarts the whole group in place.
	ps := runGroup(t, coord, "heal", 4, []string{"--stop-grace", "2s"}, "env", "FAIL_RANK_IN_GEN0=2", py, testdata(t, "allreduce.py"))
	for i, p := range ps {
		want := fmt.Sprintf("rank %d/4 generation 1: all_reduce ok, sum 10", i)
		if !strings.Contains(p.output(), want) {
			t.Errorf("agent %d output lacks %q:\n%s", i, want, p.output())
		}
		if !strings.Contains(p.output(), "member host-2 (rank 2) exited with code 3") {
			t.Errorf("agent %d does not say why the group restarted:\n%s", i, p.output())
		}
	}
}

func TestTorchrunPresetOnTwoHosts(t *testing.T) {
	py := torchPython(t)
	coord := startCoordinator(t)
	// Two hosts x two processes: torchrun's static rendezvous from muster's
	// --nnodes/--node_rank/--master_addr/--master_port, world size 4.
	ps := runGroup(t, coord, "trun", 2, []string{"--runtime", "torchrun"},
		py, testdata(t, "torchrun.py"), "--nproc_per_node", "2", testdata(t, "allreduce.py"))
	all := ps[0].output() + ps[1].output()
	for r := 0; r < 4; r++ {
		if want := fmt.Sprintf("rank %d/4 generation 0: all_reduce ok, sum 10", r); !strings.Contains(all, want) {
			t.Errorf("no %q in the agents' output:\n%s", want, all)
		}
	}
}

func TestAgentForwardsSIGTERMAndExitsWithRuntimeCode(t *testing.T) {
	coord := startCoordinator(t)
	dir := t.TempDir()
	marker, trapped := filepath.Join(dir, "stopped"), filepath.Join(dir, "trapped")
	// The runtime creates $1 once its trap is set: that file, not a word in
	// the output (the agent's own log line quotes the command), says the
	// signal can be sent.
	p := start(t, filepath.Join(bins(t), "agent"), "run", "--coordinator", coord, "--group", "sig", "--size", "1",
		"--member-id", "solo", "--address", "127.0.0.2", "--",
		"sh", "-c", `trap 'echo bye > "$0"; exit 42' TERM; : > "$1"; while true; do sleep 0.1; done`, marker, trapped)
	p.waitFile(t, trapped, 30*time.Second)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 30*time.Second); code != 42 {
		t.Fatalf("agent exited %d, want the runtime's 42:\n%s", code, p.output())
	}
	if b, err := os.ReadFile(marker); err != nil || strings.TrimSpace(string(b)) != "bye" {
		t.Fatalf("runtime did not get SIGTERM (marker %q, %v)", b, err)
	}
}

func TestAgentHelpAndBadFlags(t *testing.T) {
	agent := filepath.Join(bins(t), "agent")
	out, err := exec.Command(agent, "run", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Usage: agent run") || !strings.Contains(string(out), "torchrun") {
		t.Fatalf("agent run --help: %v\n%s", err, out)
	}
	cmd := exec.Command(agent, "run", "--group", "g", "--size", "two", "--", "true")
	out, _ = cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "-size") {
		t.Fatalf("bad --size: exit %d, output %s", cmd.ProcessState.ExitCode(), out)
	}
	cmd = exec.Command(agent, "run", "--group", "g", "--size", "2", "--runtime", "nope", "--", "true")
	out, _ = cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), `runtime "nope" is not a known preset`) {
		t.Fatalf("bad --runtime: exit %d, output %s", cmd.ProcessState.ExitCode(), out)
	}
}
