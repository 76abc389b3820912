package sched

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/internal/freeport"
)

// Profiling a scheduler under the benchmark's own load (issue #15): with
// MUSTER_BENCH_SCHED_PROFILE=DIR, every scheduler started by the benchmark
// serves its secure port on 127.0.0.1 (pprof and /metrics open to
// anonymous requests, nothing else), a CPU profile of its first
// MUSTER_BENCH_SCHED_PROFILE_SECONDS seconds (20 unless set) is written to
// DIR/<run>.cpu.pprof, and its /metrics and heap profile just before it
// stops to DIR/<run>.metrics and DIR/<run>.heap.pprof, and the requests
// the apiserver served while it ran (apiserver_request_total, by verb,
// resource and subresource; everything that talked to the apiserver, the
// benchmark's own watch and kwok included) to DIR/<run>.apiserver.txt. MUSTER_BENCH_SCHED_PROFILE_ONLY=NAME profiles only
// that scheduler (e.g. muster-scheduler). A profiled scheduler is stopped
// only once its profile is written; the run's times end before that wait.
// Unset, schedulers run with no serving port, as before.
type profiler struct {
	dir     string
	seconds int
	port    int
	run     string
	done    chan struct{}
	api     kubernetes.Interface
	before  map[string]float64
}

// newProfiler returns nil unless profiling s was asked for.
func newProfiler(b *testing.B, c *cluster.Cluster, s scheduler, run string) *profiler {
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
	ports, err := freeport.Pick(1)
	if err != nil {
		b.Fatal(err)
	}
	port := ports[0]
	api, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		b.Fatal(err)
	}
	p := &profiler{dir: dir, seconds: secs, port: port, run: run, done: make(chan struct{}), api: api}
	if p.before, err = p.apiRequests(b.Context()); err != nil {
		b.Logf("%s: apiserver requests: %v", run, err)
	}
	return p
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
	if after, err := p.apiRequests(ctx); err != nil {
		b.Logf("%s: apiserver requests: %v", p.run, err)
	} else if p.before != nil {
		var lines []string
		for k, v := range after {
			if d := v - p.before[k]; d > 0 {
				lines = append(lines, fmt.Sprintf("%8.0f %s", d, k))
			}
		}
		sort.Strings(lines)
		if err := os.WriteFile(filepath.Join(p.dir, p.run+".apiserver.txt"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			b.Logf("%s: %v", p.run, err)
		}
	}
	b.Logf("%s: profile and metrics in %s", p.run, p.dir)
}

// apiRequests reads the apiserver's apiserver_request_total, summed by
// verb, resource and subresource (watches and gets of leases included).
func (p *profiler) apiRequests(ctx context.Context) (map[string]float64, error) {
	data, err := p.api.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		end := strings.LastIndexByte(line, '}')
		if end < 0 {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line[end+1:]), 64)
		if err != nil {
			continue
		}
		labels := map[string]string{}
		for _, kv := range strings.Split(line[len("apiserver_request_total{"):end], ",") {
			if k, val, ok := strings.Cut(kv, "="); ok {
				labels[k] = strings.Trim(val, `"`)
			}
		}
		out[fmt.Sprintf("%s %s/%s", labels["verb"], labels["resource"], labels["subresource"])] += v
	}
	return out, nil
}
