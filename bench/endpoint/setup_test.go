package endpoint

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/muster-dev/muster/e2e/e2etest"
	"github.com/muster-dev/muster/internal/freeport"
)

// proc is a process the benchmark started; its output goes to a file.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// start runs name with args; b.Cleanup stops it (SIGTERM, then SIGKILL
// after 5 s) on every path.
func start(b *testing.B, env []string, name string, args ...string) *proc {
	b.Helper()
	p := &proc{log: filepath.Join(b.TempDir(), filepath.Base(name)+".log"), done: make(chan struct{})}
	out, err := os.Create(p.log)
	if err != nil {
		b.Fatal(err)
	}
	p.cmd = exec.Command(name, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		out.Close()
		b.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); out.Close(); close(p.done) }()
	b.Cleanup(func() {
		if b.Failed() {
			b.Logf("output of %s:\n%s", strings.Join(p.cmd.Args, " "), p.output())
		}
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// output is the tail of the process's output, for failure messages.
func (p *proc) output() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func freePort(b *testing.B) int {
	b.Helper()
	// Below the kernel's ephemeral range: see freeport.Pick.
	ports, err := freeport.Pick(1)
	if err != nil {
		b.Fatal(err)
	}
	return ports[0]
}

// bins is the directory with bin/coordinator and bin/agent: $MUSTER_BIN
// (make bench builds them) or a fresh build of this tree.
func bins(b *testing.B) string {
	b.Helper()
	if d := os.Getenv("MUSTER_BIN"); d != "" {
		return d
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		b.Fatal(err)
	}
	return e2etest.MusterBins(b, root)
}

// endpoints are the three ways to the same runtime process.
type endpoints struct {
	direct, muster, nginx string // base URLs
	nginxWorkers          int
}

// startAll runs bin/coordinator, bin/agent run (a group of one whose
// runtime is this test binary) and nginx in front of the same runtime, and
// waits until each answers.
func startAll(b *testing.B) endpoints {
	b.Helper()
	bin := bins(b)
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	coordAddr := fmt.Sprintf("127.0.0.1:%d", freePort(b))
	coord := start(b, nil, filepath.Join(bin, "coordinator"), "--listen", coordAddr, "--data-dir", b.TempDir(),
		"--etcd-listen-client", fmt.Sprintf("127.0.0.1:%d", freePort(b)),
		"--etcd-listen-peer", fmt.Sprintf("127.0.0.1:%d", freePort(b)), "--log-level", "warn")
	runtimePort, endpointPort := freePort(b), freePort(b)
	agent := start(b, []string{fmt.Sprintf("%s=127.0.0.1:%d", runtimeEnv, runtimePort)}, filepath.Join(bin, "agent"), "run",
		"--coordinator", coordAddr, "--group", "bench-endpoint", "--size", "1", "--member-id", "bench-0",
		"--address", "127.0.0.1", "--port", fmt.Sprint(runtimePort), "--endpoint-port", fmt.Sprint(endpointPort),
		"--no-gossip", "--log-level", "warn", "--", self)
	e := endpoints{
		direct: fmt.Sprintf("http://127.0.0.1:%d", runtimePort),
		muster: fmt.Sprintf("http://127.0.0.1:%d", endpointPort),
	}
	// The agent's endpoint answers 503 until the group is ready.
	waitOK(b, e.muster+"/v1/completions", 60*time.Second, coord, agent)
	e.nginx, e.nginxWorkers = startNginx(b, runtimePort)
	return e
}

// waitOK polls url with POST until it answers 200, failing with the
// output of procs when it does not within d.
func waitOK(b *testing.B, url string, d time.Duration, procs ...*proc) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(`{"prompt":"hi"}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			last = err.Error()
		} else {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		}
		for _, p := range procs {
			select {
			case <-p.done:
				b.Fatalf("%s exited before %s answered:\n%s", p.cmd.Path, url, p.output())
			default:
			}
		}
		select {
		case <-ctx.Done():
			var logs strings.Builder
			for _, p := range procs {
				fmt.Fprintf(&logs, "\n--- %s:\n%s", strings.Join(p.cmd.Args, " "), p.output())
			}
			b.Fatalf("%s not answering 200 within %s (last: %s)%s", url, d, last, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
