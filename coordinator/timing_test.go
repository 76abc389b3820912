package coordinator_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/muster-dev/muster/coordinator/metrics"
	"github.com/muster-dev/muster/coordinator/testcoord"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// TestTimeToReadyObservedOncePerGeneration drives a group through two
// generations (created, all joined, released, ready; a rank exits, the
// group restarts and becomes ready again), its members talking to two
// replicas of one etcd, and checks the time-to-ready histograms of both
// replicas' /metrics: each phase, and the whole way, counted once per
// generation across the replicas, in the group's namespace.
func TestTimeToReadyObservedOncePerGeneration(t *testing.T) {
	cfgA := testcoord.Config(t)
	cfgA.MetricsListen = "127.0.0.1:0"
	a := testcoord.Start(t, cfgA)
	cfgB := testcoord.Config(t)
	cfgB.EtcdEndpoints = []string{a.EtcdURL()}
	cfgB.MetricsListen = "127.0.0.1:0"
	b := testcoord.Start(t, cfgB)
	replicas := []string{a.MetricsAddr(), b.MetricsAddr()}

	m0 := newMember(t, testcoord.Client(t, a.Addr()), "timed", "m0", "127.0.0.2", 2, ord(0))
	m1 := newMember(t, testcoord.Client(t, b.Addr()), "timed", "m1", "127.0.0.3", 2, ord(1))
	members := []*member{m0, m1}
	m0.join(-1)
	time.Sleep(50 * time.Millisecond) // created -> all joined takes a measurable time
	m1.join(-1)
	for _, m := range members {
		m.watch()
		m.assignment()
		m.report(0, musterv1.RuntimeState_RUNTIME_STATE_READY, 0)
	}
	waitCounts(t, replicas, 1)

	// Rank 1 exits: generation 1 goes the whole way again.
	m1.report(0, musterv1.RuntimeState_RUNTIME_STATE_EXITED, 3)
	for _, m := range members {
		m.restart()
	}
	for _, m := range members {
		m.join(1)
	}
	for _, m := range members {
		m.next("generation 1 assignment", func(ev *musterv1.GroupEvent) bool { return ev.GetAssignment().GetGeneration() == 1 })
		m.report(1, musterv1.RuntimeState_RUNTIME_STATE_READY, 0)
	}
	waitCounts(t, replicas, 2)
	// Nothing more is counted later (a transition seen by both replicas,
	// or a ready group reconciled again).
	time.Sleep(300 * time.Millisecond)
	if got := counts(t, replicas); !allAre(got, 2) {
		t.Errorf("after settling: %v, want every series at 2", got)
	}
	if s := phaseSum(t, replicas, metrics.PhaseJoining); s < 0.04 {
		t.Errorf("created_to_joined sums to %.3fs over two generations; want at least the 50ms between the joins", s)
	}
}

// series counted: the phases, and the whole way to ready.
var timingSeries = []string{metrics.PhaseJoining, metrics.PhaseReleasing, metrics.PhaseStarting, "total"}

// waitCounts waits until every series' count, summed over the replicas,
// is n; it fails at once if one goes past n.
func waitCounts(t *testing.T, replicas []string, n uint64) {
	t.Helper()
	eventually(t, fmt.Sprintf("every generation's phases counted %d times", n), func() (bool, string) {
		got := counts(t, replicas)
		for _, s := range timingSeries {
			if got[s] > n {
				t.Fatalf("%s counted %d times, more than the %d generations: %v", s, got[s], n, got)
			}
		}
		return allAre(got, n), fmt.Sprint(got)
	})
}

func allAre(got map[string]uint64, n uint64) bool {
	for _, s := range timingSeries {
		if got[s] != n {
			return false
		}
	}
	return true
}

// counts scrapes the replicas and sums the histograms' counts in
// namespace test by phase ("total" for muster_group_time_to_ready_seconds).
func counts(t *testing.T, replicas []string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, h := range scrapeHistograms(t, replicas) {
		out[h.series] += h.h.GetSampleCount()
	}
	return out
}

func phaseSum(t *testing.T, replicas []string, phase string) float64 {
	t.Helper()
	var sum float64
	for _, h := range scrapeHistograms(t, replicas) {
		if h.series == phase {
			sum += h.h.GetSampleSum()
		}
	}
	return sum
}

type seriesHistogram struct {
	series string
	h      *dto.Histogram
}

func scrapeHistograms(t *testing.T, replicas []string) []seriesHistogram {
	t.Helper()
	var out []seriesHistogram
	for _, addr := range replicas {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("parse /metrics of %s: %v", addr, err)
		}
		for _, name := range []string{"muster_group_phase_duration_seconds", "muster_group_time_to_ready_seconds"} {
			for _, m := range fams[name].GetMetric() {
				series := "total"
				for _, l := range m.GetLabel() {
					switch {
					case l.GetName() == "namespace" && l.GetValue() != "test":
						t.Errorf("%s: namespace %q, want the group's, test", name, l.GetValue())
					case l.GetName() == "phase":
						series = l.GetValue()
					case l.GetName() == "group":
						t.Errorf("%s has a group label: one series per group is too many", name)
					}
				}
				out = append(out, seriesHistogram{series, m.GetHistogram()})
			}
		}
	}
	return out
}
