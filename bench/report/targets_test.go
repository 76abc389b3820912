package report

import "testing"

func TestWithTarget(t *testing.T) {
	for _, c := range []struct {
		row  Row
		want string // TargetText
	}{
		{Row{Name: "rendezvous N=16: last start to every rank held", Anchor: "torch-c10d", Ours: 400, AnchorValue: 1960, Better: Lower}, ">= 20x: NOT MET"},
		{Row{Name: "rendezvous N=4: last start to every rank held", Anchor: "torch-c10d", Ours: 19.6, AnchorValue: 1228, Better: Lower}, ">= 20x: met"},
		// The same row name has a target per anchor.
		{Row{Name: "gang scheduling: pods bound per second", Anchor: "default-scheduler", Ours: 95, AnchorValue: 100, Better: Higher}, ">= 0.9x: met"},
		{Row{Name: "gang scheduling: pods bound per second", Anchor: "coscheduling", Ours: 95, AnchorValue: 100, Better: Higher}, ">= 1x: NOT MET"},
		{Row{Name: "gang scheduling: pods bound per second", Anchor: "upstream-gang", Ours: 150, AnchorValue: 100, Better: Higher}, ">= 2x: NOT MET"},
		// An absolute bound on muster's own value, whatever the anchor.
		{Row{Name: "failure/agent-kill (torch fastest)", Unit: "ms", Anchor: "torch-elastic", Ours: 31.3, AnchorValue: 1505, Better: Lower}, "<= 100 ms: met"},
		{Row{Name: "failure/agent-kill (torch defaults)", Unit: "ms", Anchor: "torch-elastic", Ours: 554, AnchorValue: 6612, Better: Lower}, "<= 100 ms: NOT MET"},
		// A row that did not run (0) meets nothing.
		{Row{Name: "launch N=64: start launchers to all exited 0", Anchor: "torch-c10d", Ours: 0, AnchorValue: 104000, Better: Lower}, ">= 10x: NOT MET"},
		// Rows without a goal are only reported.
		{Row{Name: "launch N=4: start launchers to all exited 0", Anchor: "torch-c10d", Ours: 262, AnchorValue: 3495, Better: Lower}, ""},
		{Row{Name: "gang scheduling: pods bound per second", Anchor: "someone-else", Ours: 1, AnchorValue: 1, Better: Higher}, ""},
	} {
		r := c.row.WithRatio().WithTarget()
		if got := r.TargetText(); got != c.want {
			t.Errorf("%s vs %s (ratio %.2f): target %q, want %q", c.row.Name, c.row.Anchor, r.Ratio, got, c.want)
		}
	}
}
