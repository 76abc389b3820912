package sched

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Profiling a scheduler under the benchmark's own load (issue #15): with
// MUSTER_BENCH_SCHED_PROFILE=DIR, every scheduler started by the benchmark
// serves its secure port on 127.0.0.1 (pprof and /metrics open to
// anonymous requests, nothing else), a CPU profile of its first
// MUSTER_BENCH_SCHED_PROFILE_SECONDS seconds (20 unless set) is written to
// DIR/<run>.cpu.pprof, and its /metrics and heap profile just before it
// stops to DIR/<run>.metrics and DIR/<run>.heap.pprof. MUSTER_BENCH_SCHED_PROFILE_ONLY=NAME profiles only
// that scheduler (e.g. muster-scheduler). A profiled scheduler is stopped
// only once its profile is written; the run's times end before that wait.
// Unset, schedulers run with no serving port, as before.
type profiler struct {
	dir     string
	seconds int
	port    int
	run     string
	done    chan struct{}
}

// newProfiler returns nil unless profiling s was asked for.
func newProfiler(b *testing.B, s scheduler, run string) *profiler {
	dir := os.Getenv("MUSTER_BENCH_SCHED_PROFILE")
	if dir == "" {
		return nil
	}
	if only := os.Getenv("MUSTER_BENCH_SCHED_PROFILE_ONLY"); only != "" && only != s.name {
		return nil
	}
	secs := 20
	if v := os.Getenv("MUSTER_BENCH_SCHED_PROFILE_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("MUSTER_BENCH_SCHED_PROFILE_SECONDS=%q: want a positive number", v)
		}
		secs = n
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return &profiler{dir: dir, seconds: secs, port: port, run: run, done: make(chan struct{})}
}

// args serve the secure port with pprof and metrics open to anonymous
// requests (the local control plane has no delegated authentication).
func (p *profiler) args() []string {
	return []string{
		"--secure-port=" + strconv.Itoa(p.port), "--bind-address=127.0.0.1",
		"--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics,/debug/pprof,/debug/pprof/*",
	}
}

var insecure = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}

func (p *profiler) get(ctx context.Context, path, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d%s", p.port, path), nil)
	if err != nil {
		return err
	}
	resp, err := insecure.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(data)))
	}
	if file == "" {
		return nil
	}
	return os.WriteFile(filepath.Join(p.dir, p.run+file), data, 0o644)
}

// start takes the CPU profile as soon as the scheduler answers.
func (p *profiler) start(b *testing.B) {
	go func() {
		defer close(p.done)
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(p.seconds)*time.Second+30*time.Second)
		defer cancel()
		for p.get(ctx, "/healthz", "") != nil {
			if ctx.Err() != nil {
				b.Logf("%s: scheduler's secure port never answered", p.run)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := p.get(ctx, "/debug/pprof/profile?seconds="+strconv.Itoa(p.seconds), ".cpu.pprof"); err != nil {
			b.Logf("%s: CPU profile: %v", p.run, err)
		}
	}()
}

// finish waits for the profile, then saves the metrics and a heap profile.
func (p *profiler) finish(b *testing.B) {
	<-p.done
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.get(ctx, "/metrics", ".metrics"); err != nil {
		b.Logf("%s: metrics: %v", p.run, err)
	}
	if err := p.get(ctx, "/debug/pprof/heap", ".heap.pprof"); err != nil {
		b.Logf("%s: heap profile: %v", p.run, err)
	}
	b.Logf("%s: profile and metrics in %s", p.run, p.dir)
}
