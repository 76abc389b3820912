// Package report collects benchmark results as rows comparing muster with
// an anchor (the system a user would pick instead) and writes them where
// `make bench` gathers them.
//
// Benchmarks (go test -bench in bench/...) call Add; each row is appended as
// one JSON line to the file named by $MUSTER_BENCH_OUT (nothing is written
// when it is unset, so `go test -bench` alone still prints its log).
// bench/cmd/benchreport turns the lines into .local/bench.json and a table.
package report

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"sync"
	"testing"
	"time"
)

// Better says which direction wins.
type Better string

const (
	Lower  Better = "lower"  // times, bytes, GPUs held
	Higher Better = "higher" // throughput
)

// Row is one comparison. Name, Unit, Ours, Anchor, AnchorValue and Ratio are
// the fields the bench.json contract names; the rest explain them.
type Row struct {
	Name        string  `json:"name"`
	Unit        string  `json:"unit"`
	Ours        float64 `json:"ours"`
	Anchor      string  `json:"anchor"`
	AnchorValue float64 `json:"anchor_value"`
	// Ratio is how many times better muster is: anchor/ours for Lower,
	// ours/anchor for Higher. Above 1 muster wins. 0 when undefined.
	Ratio  float64 `json:"ratio"`
	Better Better  `json:"better"`
	// Params says what was run (sizes, repetitions, settings).
	Params string `json:"params,omitempty"`
	// OursSpread and AnchorSpread give the spread, e.g. "p99 12 ms, max 15 ms, n=20".
	OursSpread   string `json:"ours_spread,omitempty"`
	AnchorSpread string `json:"anchor_spread,omitempty"`
	Note         string `json:"note,omitempty"`
	// Target is the row's goal and whether this run met it (see goals);
	// nil for a row that is only reported.
	Target *Target `json:"target,omitempty"`
}

// WithRatio fills Ratio from Ours, AnchorValue and Better.
func (r Row) WithRatio() Row {
	r.Ratio = ratio(r.Ours, r.AnchorValue, r.Better)
	return r
}

func ratio(ours, anchor float64, b Better) float64 {
	if ours <= 0 || anchor <= 0 || math.IsNaN(ours) || math.IsNaN(anchor) {
		return 0
	}
	if b == Higher {
		return ours / anchor
	}
	return anchor / ours
}

var mu sync.Mutex

// Add computes the ratio, logs the row on tb and appends it to
// $MUSTER_BENCH_OUT. A row without name, unit, anchor or direction is a
// programming error and fails tb.
func Add(tb testing.TB, r Row) {
	tb.Helper()
	if r.Name == "" || r.Unit == "" || r.Anchor == "" || (r.Better != Lower && r.Better != Higher) {
		tb.Fatalf("report.Add: row %+v needs Name, Unit, Anchor and Better (lower|higher)", r)
	}
	r = r.WithRatio().WithTarget()
	target := ""
	if t := r.TargetText(); t != "" {
		target = ", target " + t
	}
	tb.Logf("%s: ours %s %s, %s %s %s, ratio %.2f (%s is better%s) [%s]",
		r.Name, Fmt(r.Ours), r.Unit, r.Anchor, Fmt(r.AnchorValue), r.Unit, r.Ratio, r.Better, target, r.Params)
	path := os.Getenv("MUSTER_BENCH_OUT")
	if path == "" {
		return
	}
	b, err := json.Marshal(r)
	if err != nil {
		tb.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		tb.Fatalf("report: %v", err)
	}
	defer f.Close()
	if _, err := f.Write(append(b, '\n')); err != nil {
		tb.Fatalf("report: write %s: %v", path, err)
	}
}

// Fmt prints a value with three significant digits.
func Fmt(v float64) string {
	switch a := math.Abs(v); {
	case v == 0:
		return "0"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// Stats summarises repeated measurements.
type Stats struct {
	N                     int
	Min, Median, P99, Max float64
}

// Summarize sorts a copy of xs and returns its summary (zero Stats for none).
func Summarize(xs []float64) Stats {
	if len(xs) == 0 {
		return Stats{}
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return Stats{N: len(s), Min: s[0], Median: Quantile(s, 0.5), P99: Quantile(s, 0.99), Max: s[len(s)-1]}
}

// Quantile of sorted xs, nearest-rank.
func Quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Spread is the text for Row.OursSpread / AnchorSpread.
func (s Stats) Spread(unit string) string {
	return fmt.Sprintf("min %s, p99 %s, max %s %s, n=%d", Fmt(s.Min), Fmt(s.P99), Fmt(s.Max), unit, s.N)
}

// Millis converts durations to milliseconds.
func Millis(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Millisecond)
	}
	return out
}
