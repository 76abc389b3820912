package report

import (
	"fmt"
	"strings"
)

// Target is what a row must reach for muster's side to count as good
// enough: a ratio to the anchor measured in the same run (MinRatio), or an
// absolute bound on muster's own value (MaxOurs, in the row's unit). The
// targets are the project's, set in issue #15 from what users would pick
// instead; a benchmark only reports against them, it asserts nothing.
type Target struct {
	MinRatio float64 `json:"min_ratio,omitempty"`
	MaxOurs  float64 `json:"max_ours,omitempty"`
	// Met is whether this run's row reached the target.
	Met bool `json:"met"`
}

// String reads like the README's target column: ">= 0.9x", "<= 100 ms".
func (t Target) String(unit string) string {
	if t.MaxOurs > 0 {
		return fmt.Sprintf("<= %g %s", t.MaxOurs, unit)
	}
	return fmt.Sprintf(">= %gx", t.MinRatio)
}

// goal names the rows one target applies to: rows whose name starts with
// prefix, against anchor ("" = any anchor).
type goal struct {
	prefix, anchor string
	t              Target
}

// goals are the targets by row. The first goal that matches a row is its
// target; a row no goal matches has none (it is reported only).
var goals = []goal{
	// Rendezvous against torch's c10d, every N; launch at N=64.
	{"rendezvous N=", "torch-c10d", Target{MinRatio: 20}},
	{"launch N=64:", "torch-c10d", Target{MinRatio: 10}},
	// Gang scheduling rate: default-scheduler, with no gang semantics, is
	// the upper bound.
	{"gang scheduling: pods bound per second", "default-scheduler", Target{MinRatio: 0.9}},
	{"gang scheduling: pods bound per second", "coscheduling", Target{MinRatio: 1}},
	{"gang scheduling: pods bound per second", "upstream-gang", Target{MinRatio: 2}},
	// Contention: no worse than the best gang anchor, so at least even with
	// each of them.
	{"contention: max GPUs held by incomplete gangs", "coscheduling", Target{MinRatio: 1}},
	{"contention: max GPUs held by incomplete gangs", "upstream-gang", Target{MinRatio: 1}},
	{"contention: longest a gang held GPUs while incomplete", "coscheduling", Target{MinRatio: 1}},
	{"contention: longest a gang held GPUs while incomplete", "upstream-gang", Target{MinRatio: 1}},
	{"contention: time until all", "coscheduling", Target{MinRatio: 1}},
	{"contention: time until all", "upstream-gang", Target{MinRatio: 1}},
	// Within 1.5x of a bare etcd barrier; N-1 arrivals within 2x.
	{"rendezvous at scale N=1024: last join", "floor-etcd-put", Target{MinRatio: 0.67}},
	{"rendezvous at scale N=4096: last join", "floor-etcd-put", Target{MinRatio: 0.67}},
	{"rendezvous at scale N=1024: N-1 arrive", "floor-etcd-put", Target{MinRatio: 0.5}},
	{"rendezvous at scale N=4096: N-1 arrive", "floor-etcd-put", Target{MinRatio: 0.5}},
	// The endpoint against nginx.
	{"endpoint max throughput", "nginx", Target{MinRatio: 0.8}},
	{"endpoint latency at fixed rate p50 (added over direct)", "nginx", Target{MinRatio: 1}},
	{"endpoint latency at fixed rate p99 (added over direct)", "nginx", Target{MinRatio: 1}},
	// A killed agent's sockets close at once: every survivor told within
	// 100 ms, whatever torch takes.
	{"failure/agent-kill", "", Target{MaxOurs: 100}},
	// A member cut off (no socket closes): every survivor told within
	// 500 ms in the worst trial.
	{"failure/cut-off", "", Target{MaxOurs: 500}},
}

// WithTarget sets r.Target from the goals (nil when none applies) and
// whether r meets it. Ratio must be filled first (WithRatio).
func (r Row) WithTarget() Row {
	r.Target = nil
	for _, g := range goals {
		if !strings.HasPrefix(r.Name, g.prefix) || (g.anchor != "" && g.anchor != r.Anchor) {
			continue
		}
		t := g.t
		if t.MaxOurs > 0 {
			t.Met = r.Ours > 0 && r.Ours <= t.MaxOurs
		} else {
			t.Met = r.Ratio >= t.MinRatio
		}
		r.Target = &t
		return r
	}
	return r
}

// TargetText is the row's target and whether it was met, for tables:
// ">= 0.90x: not met", or "" for a row without a target.
func (r Row) TargetText() string {
	if r.Target == nil {
		return ""
	}
	met := "NOT MET"
	if r.Target.Met {
		met = "met"
	}
	return r.Target.String(r.Unit) + ": " + met
}
