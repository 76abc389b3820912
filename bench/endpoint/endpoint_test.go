package endpoint

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/muster-dev/muster/bench/report"
)

// Settings of the three measurements. Fixed-rate requests and streams take
// turns between the targets request by request; wrk runs alternate them
// (direct, muster, nginx, direct, ...). Either way load from other work on
// the machine falls on all three alike.
const (
	rate      = 500 // requests per second to each target, open loop
	rateSpell = 10 * time.Second

	wrkThreads = 2
	wrkConns   = 64
	wrkRounds  = 3
	wrkSpell   = 3 * time.Second

	streams     = 200 // per target
	streamsConc = 4
)

// throughputNote says where the proxy's throughput goes.
const throughputNote = "muster's endpoint is net/http's httputil.ReverseProxy (in process it forwards as fast as a bare " +
	"ReverseProxy): each request is handed between the server's goroutine and the transport's read and write " +
	"goroutines, waking threads, where an nginx worker's event loop makes the same socket calls without hand-offs; " +
	"the runtime, the proxy and wrk share the same 2 cores"

type target struct {
	name string // "muster", or the anchor's name
	base string
}

// BenchmarkEndpoint compares the agent's endpoint with calling the runtime
// directly and with nginx in front of it: latency at a fixed rate, maximum
// throughput, and time to the first event of a streamed completion.
func BenchmarkEndpoint(b *testing.B) {
	if _, err := exec.LookPath("wrk"); err != nil {
		b.Fatal("wrk not found: run make bench-deps (apt-get install nginx-light wrk)")
	}
	began := time.Now()
	e := startAll(b)
	targets := []target{{"direct", e.direct}, {"muster", e.muster}, {"nginx", e.nginx}}
	ctx := context.Background()
	setup := fmt.Sprintf("runtime: Go net/http (JSON %d B; SSE %d events %s apart) launched by the real bin/agent run "+
		"(group of 1, real bin/coordinator, --port = runtime, --endpoint-port = muster); nginx %s master + %d workers "+
		"(= GOMAXPROCS of the Go proxy), upstream keepalive 64, proxy_buffering off for the stream; "+
		"loopback; 2 cores shared by client, proxy and runtime, nothing pinned",
		len(completion), streamEvents, streamGap, nginxVersion(), e.nginxWorkers)

	// Fixed rate: latency of POST /v1/completions.
	bases := make([]string, len(targets))
	for i, t := range targets {
		bases[i] = t.base
	}
	fixedRate(ctx, bases, rate, time.Second) // warm up
	lat := bySample(targets, fixedRate(ctx, bases, rate, rateSpell))
	rateParams := fmt.Sprintf("vegeta v12 constant-rate attacker (open loop; Debian has no wrk2), %d req/s to each target for %s, "+
		"targets taking turns; latency from each request's send; %s", rate, rateSpell, setup)
	addLatencyRows(b, "endpoint latency at fixed rate", lat, rateParams)

	// Maximum throughput with wrk.
	rps := map[string][]float64{}
	failed := map[string]int{}
	for range wrkRounds {
		for _, t := range targets {
			r, f := wrk(b, t.base+"/v1/completions", wrkThreads, wrkConns, wrkSpell)
			rps[t.name] = append(rps[t.name], r)
			failed[t.name] += f
		}
	}
	wrkParams := fmt.Sprintf("wrk -t%d -c%d, POST /v1/completions, %d x %s per target interleaved, median of rounds; %s",
		wrkThreads, wrkConns, wrkRounds, wrkSpell, setup)
	ours := report.Summarize(rps["muster"])
	for _, anchor := range []string{"direct", "nginx"} {
		a := report.Summarize(rps[anchor])
		report.Add(b, report.Row{
			Name: "endpoint max throughput", Unit: "req/s", Better: report.Higher,
			Ours: ours.Median, Anchor: anchor, AnchorValue: a.Median, Params: wrkParams,
			OursSpread:   roundsSpread(rps["muster"], failed["muster"]),
			AnchorSpread: roundsSpread(rps[anchor], failed[anchor]),
			Note:         throughputNote,
		})
	}

	// Time to first event of a streamed completion.
	first := bySample(targets, ttfb(ctx, bases, streams, streamsConc))
	streamParams := fmt.Sprintf("%d streamed completions per target, %d at a time, taking turns between the targets; "+
		"time from sending POST /v1/stream to reading its first event (every stream checked whole); %s",
		streams, streamsConc, setup)
	addLatencyRows(b, "endpoint stream time to first byte", first, streamParams)
	b.Logf("endpoint suite took %s", time.Since(began).Round(time.Second))
}

// addLatencyRows adds p50 and p99 rows: against direct the absolute values
// (the proxy can only add to them), against nginx the latency each proxy
// adds to direct's (difference of the percentiles, not a percentile of
// paired differences: requests are not paired).
func addLatencyRows(b *testing.B, name string, s map[string]*sample, params string) {
	b.Helper()
	st := map[string]report.Stats{}
	for k, v := range s {
		st[k] = report.Summarize(v.us)
	}
	spread := func(k string) string {
		return fmt.Sprintf("p50 %s, p99 %s, max %s µs, n=%d, failed %d",
			report.Fmt(st[k].Median), report.Fmt(st[k].P99), report.Fmt(st[k].Max), st[k].N, s[k].failed)
	}
	for k, v := range s {
		if v.failed > 0 {
			b.Logf("%s via %s: %d failed, the first with: %s", name, k, v.failed, v.firstErr)
		}
	}
	for _, q := range []struct {
		name string
		of   func(report.Stats) float64
	}{{"p50", func(x report.Stats) float64 { return x.Median }}, {"p99", func(x report.Stats) float64 { return x.P99 }}} {
		ours, direct, nginx := q.of(st["muster"]), q.of(st["direct"]), q.of(st["nginx"])
		report.Add(b, report.Row{
			Name: name + " " + q.name + " (absolute)", Unit: "µs", Better: report.Lower,
			Ours: ours, Anchor: "direct", AnchorValue: direct, Params: params,
			OursSpread: spread("muster"), AnchorSpread: spread("direct"),
			Note: "absolute latency through muster's endpoint vs calling the runtime directly; direct is the floor",
		})
		row := report.Row{
			Name: name + " " + q.name + " (added over direct)", Unit: "µs", Better: report.Lower,
			Ours: ours - direct, Anchor: "nginx", AnchorValue: nginx - direct, Params: params,
			OursSpread: spread("muster"), AnchorSpread: spread("nginx"),
			Note: fmt.Sprintf("latency the proxy adds: its %s minus direct's (%s µs)", q.name, report.Fmt(direct)),
		}
		if q.name == "p99" {
			row.Note += "; a p99 here is mostly stalls from other work on the 2 shared cores and moves a lot between runs: read p50 first"
		}
		if row.Ours <= 0 || row.AnchorValue <= 0 {
			row.Note += "; an added latency at or below 0 is within the noise, so the ratio is undefined (0)"
		}
		report.Add(b, row)
	}
}

// bySample names each target's sample.
func bySample(targets []target, s []sample) map[string]*sample {
	m := map[string]*sample{}
	for i, t := range targets {
		m[t.name] = &s[i]
	}
	return m
}

func roundsSpread(rps []float64, failed int) string {
	parts := make([]string, len(rps))
	for i, r := range rps {
		parts[i] = report.Fmt(r)
	}
	return fmt.Sprintf("rounds %s req/s, failed %d", strings.Join(parts, ", "), failed)
}

func nginxVersion() string {
	out, err := exec.Command(nginxBin, "-v").CombinedOutput()
	if err != nil {
		return "(version unknown)"
	}
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version: "))
}
