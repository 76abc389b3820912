package preset

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeRay puts a stand-in `ray` command and `ray` Python package in front
// of the real ones: `ray start` logs its arguments and, with --head, runs
// until TERM; ray.init() fails until the up file exists and ray.nodes()
// reports as many alive nodes as the nodes file says.
type fakeRay struct {
	dir, log, up, nodes, polled string
}

func newFakeRay(t *testing.T) fakeRay {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not on PATH")
	}
	d := t.TempDir()
	f := fakeRay{dir: d, log: filepath.Join(d, "ray.log"), up: filepath.Join(d, "up"), nodes: filepath.Join(d, "nodes"), polled: filepath.Join(d, "polled")}
	write := func(name, text string, mode os.FileMode) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(d, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, name), []byte(text), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("bin/ray", `#!/bin/sh
echo "$*" >> "`+f.log+`"
case "$*" in *--head*) ;; *) exit 0 ;; esac
trap 'echo "head stopped" >> "`+f.log+`"; exit 0' TERM
touch "`+f.up+`"
while :; do sleep 0.1; done
`, 0o755)
	write("py/ray/__init__.py", `import os
def init(address=None, **kw):
    if not os.path.exists("`+f.up+`"):
        raise ConnectionError("no head at %s" % address)
def nodes():
    with open("`+f.polled+`", "a") as fd:
        fd.write("polled\n")
    with open("`+f.nodes+`") as fd:
        return [{"Alive": True}] * int(fd.read() or 0)
`, 0o644)
	write("nodes", "1", 0o644)
	return f
}

func (f fakeRay) start(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	script := filepath.Join(t.TempDir(), rayScript)
	if err := os.WriteFile(script, []byte(rayScriptText), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", append([]string{script}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(f.dir, "bin")+":"+os.Getenv("PATH"), "PYTHONPATH="+filepath.Join(f.dir, "py"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	return cmd
}

// waitPolled waits until the head script has asked ray for its nodes at
// least once: the head is up, the script's trap is set, and it has seen
// the node count in the nodes file.
func (f fakeRay) waitPolled(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b, _ := os.ReadFile(f.polled); len(b) > 0 {
			return
		}
		if cmd.ProcessState != nil || time.Now().After(deadline) {
			t.Fatalf("the head script never asked ray for its nodes; ray calls:\n%s", f.logged(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f fakeRay) logged(t *testing.T) string {
	t.Helper()
	b, _ := os.ReadFile(f.log)
	return string(b)
}

// exitCode waits for cmd, at most d.
func exitCode(t *testing.T, cmd *exec.Cmd, d time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(d):
		t.Fatalf("ray script still running after %s", d)
		return -1
	}
}

func TestRayHeadRunsTheCommandOnceEveryNodeIsAliveAndStopsTheHead(t *testing.T) {
	f := newFakeRay(t)
	marker := filepath.Join(t.TempDir(), "ran")
	cmd := f.start(t, "head", "2", "29500", "127.0.0.1", "127.0.0.1:29500", "sh", "-c", `echo ran > "$0"; exit 7`, marker)
	f.waitPolled(t, cmd)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran with 1 of 2 nodes alive")
	}
	if err := os.WriteFile(f.nodes, []byte("2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code := exitCode(t, cmd, 20*time.Second); code != 7 {
		t.Fatalf("script exited %d, want the command's 7", code)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatal("the command did not run")
	}
	log := f.logged(t)
	if !strings.Contains(log, "start --head --port=29500 --node-ip-address=127.0.0.1 --block\n") || !strings.Contains(log, "head stopped") {
		t.Fatalf("ray calls:\n%s\nwant the head started with --head --port --block, and stopped after the command", log)
	}
}

func TestRayHeadStopsEverythingOnSIGTERMWhileWaitingForNodes(t *testing.T) {
	f := newFakeRay(t)
	cmd := f.start(t, "head", "3", "29500", "127.0.0.1", "127.0.0.1:29500", "true")
	f.waitPolled(t, cmd)
	// The agent signals the runtime's whole process group.
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := exitCode(t, cmd, 10*time.Second); code != 143 {
		t.Fatalf("script exited %d after SIGTERM, want 143", code)
	}
	if log := f.logged(t); !strings.Contains(log, "head stopped") {
		t.Fatalf("ray head not stopped:\n%s", log)
	}
}

func TestRayWorkerWaitsForTheHeadThenJoinsIt(t *testing.T) {
	f := newFakeRay(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := f.start(t, "worker", addr, "127.0.0.3")
	time.Sleep(1 * time.Second)
	if log := f.logged(t); log != "" {
		t.Fatalf("worker started ray before the head answered: %s", log)
	}
	l, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s was taken meanwhile: %v", addr, err)
	}
	defer l.Close()
	if code := exitCode(t, cmd, 10*time.Second); code != 0 {
		t.Fatalf("worker script exited %d", code)
	}
	if log, want := f.logged(t), "start --address="+addr+" --node-ip-address=127.0.0.3 --block\n"; log != want {
		t.Fatalf("ray calls %q, want %q", log, want)
	}
}
