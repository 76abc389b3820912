package metrics

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/muster-dev/muster/coordinator/rendezvous"
)

// A generation's way to ready, as the transitions that end its phases
// write it: began at 1000s, all joined 12s later, released 0.5s after
// that, every rank ready 40s after the release.
func TestTimingObservesEachPhaseOnce(t *testing.T) {
	const began = 1_000_000
	waiting := rendezvous.State{Size: 2, Phase: rendezvous.Waiting, StartedMs: began}
	released := waiting
	released.Phase, released.JoinedMs, released.ReleasedMs = rendezvous.Running, began+12_000, began+12_500
	ready := released
	ready.ReadyMs = began + 52_500

	tm := NewTiming()
	tm.Transition("ns", &waiting, &released)
	tm.Transition("ns", &released, &ready)
	// A later transition of the same generation (it completes) and a
	// restart observe nothing.
	done := ready
	done.Phase = rendezvous.Completed
	tm.Transition("ns", &ready, &done)
	ready.MaxRestarts = 1
	next := rendezvous.Restart(&ready, time.UnixMilli(began+60_000), "a", "exited 1")
	tm.Transition("ns", &ready, &next.Next)

	want := `
# HELP muster_group_phase_duration_seconds Time a group's generation spent in each phase on its way to ready (created_to_joined, joined_to_released, released_to_ready), observed once per generation. Each replica counts the transitions it made: sum over replicas.
# TYPE muster_group_phase_duration_seconds histogram
` + histogram("muster_group_phase_duration_seconds", `namespace="ns",phase="created_to_joined"`, 12) +
		histogram("muster_group_phase_duration_seconds", `namespace="ns",phase="joined_to_released"`, 0.5) +
		histogram("muster_group_phase_duration_seconds", `namespace="ns",phase="released_to_ready"`, 40) + `
# HELP muster_group_time_to_ready_seconds Time from a group's generation beginning (created or restarted) to every rank reporting ready, observed once per generation. Each replica counts the transitions it made: sum over replicas.
# TYPE muster_group_time_to_ready_seconds histogram
` + histogram("muster_group_time_to_ready_seconds", `namespace="ns"`, 52.5)
	if err := testutil.CollectAndCompare(tm, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// A state from a coordinator that recorded no moments observes nothing,
// and one that recorded some observes only the phases it can measure.
func TestTimingSkipsUnrecordedMoments(t *testing.T) {
	old := rendezvous.State{Size: 1, Phase: rendezvous.Waiting}
	released := old
	released.Phase, released.ReleasedMs = rendezvous.Running, 5_000
	ready := released
	ready.ReadyMs = 7_000

	tm := NewTiming()
	tm.Transition("ns", &old, &released)
	tm.Transition("ns", &released, &ready)
	if n := testutil.CollectAndCount(tm, "muster_group_time_to_ready_seconds"); n != 0 {
		t.Errorf("time to ready without a start: %d series, want none", n)
	}
	want := `
# HELP muster_group_phase_duration_seconds Time a group's generation spent in each phase on its way to ready (created_to_joined, joined_to_released, released_to_ready), observed once per generation. Each replica counts the transitions it made: sum over replicas.
# TYPE muster_group_phase_duration_seconds histogram
` + histogram("muster_group_phase_duration_seconds", `namespace="ns",phase="released_to_ready"`, 2)
	if err := testutil.CollectAndCompare(tm, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	// Clocks of two replicas may disagree: never a negative duration.
	if got := seconds(2_000, 1_000); got != 0 {
		t.Errorf("seconds(2000, 1000) = %v, want 0", got)
	}
	var none *Timing
	none.Transition("ns", &old, &released) // a replica without metrics
}

// histogram is the exposition of one histogram series with one
// observation v, over TimeBuckets.
func histogram(name, labels string, v float64) string {
	var b strings.Builder
	for _, le := range TimeBuckets {
		n := 0
		if v <= le {
			n = 1
		}
		b.WriteString(name + "_bucket{" + labels + `,le="` + trimFloat(le) + `"} ` + trimFloat(float64(n)) + "\n")
	}
	b.WriteString(name + "_bucket{" + labels + `,le="+Inf"} 1` + "\n")
	b.WriteString(name + "_sum{" + labels + "} " + trimFloat(v) + "\n")
	b.WriteString(name + "_count{" + labels + "} 1\n")
	return b.String()
}

func trimFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }
