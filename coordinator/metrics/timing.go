package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/muster-dev/muster/coordinator/rendezvous"
)

// The phases of a generation's way to ready, as the phase label of
// muster_group_phase_duration_seconds names them. A generation begins when
// its group is created (or started afresh) or restarted.
const (
	// PhaseJoining: from the generation's beginning until its last member
	// joined (pods scheduled, started, their agents in).
	PhaseJoining = "created_to_joined"
	// PhaseReleasing: from then until the barrier released (the restart
	// backoff, if any, otherwise a watch round trip).
	PhaseReleasing = "joined_to_released"
	// PhaseStarting: from the release until every rank's runtime reported
	// ready (the runtimes start and load their models).
	PhaseStarting = "released_to_ready"
)

// TimeBuckets are the histograms' buckets, in seconds: from a rendezvous
// on one machine (well under a second) to a large model loading for an
// hour.
var TimeBuckets = []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600}

// Timing holds the histograms of how long each generation of a group took
// to become ready, phase by phase. The moments come from the group's state
// in etcd (rendezvous.State's StartedMs, JoinedMs, ReleasedMs and ReadyMs),
// so they are the same whichever replica reads them; each is observed by
// the one replica whose compare-and-swap wrote the transition that ends
// it, so a generation is counted once in the cluster: unlike the gauges of
// Collector, sum these over replicas.
type Timing struct {
	phase *prometheus.HistogramVec
	total *prometheus.HistogramVec
}

// NewTiming returns empty histograms; register them where /metrics is
// served and call Transition for every state change the replica made.
func NewTiming() *Timing {
	return &Timing{
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "muster_group_phase_duration_seconds",
			Help: "Time a group's generation spent in each phase on its way to ready (" +
				PhaseJoining + ", " + PhaseReleasing + ", " + PhaseStarting + "), observed once per generation. " +
				"Each replica counts the transitions it made: sum over replicas.",
			Buckets: TimeBuckets,
		}, []string{"namespace", "phase"}),
		total: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "muster_group_time_to_ready_seconds",
			Help: "Time from a group's generation beginning (created or restarted) to every rank reporting ready, " +
				"observed once per generation. Each replica counts the transitions it made: sum over replicas.",
			Buckets: TimeBuckets,
		}, []string{"namespace"}),
	}
}

// Describe implements prometheus.Collector.
func (t *Timing) Describe(ch chan<- *prometheus.Desc) {
	t.phase.Describe(ch)
	t.total.Describe(ch)
}

// Collect implements prometheus.Collector.
func (t *Timing) Collect(ch chan<- prometheus.Metric) {
	t.phase.Collect(ch)
	t.total.Collect(ch)
}

// Transition observes the phases that end with the group's state moving
// from prev to next, a change this replica wrote. The release ends the
// joining and releasing phases; the first ready ends the starting phase
// and the whole way to ready. A moment that was not recorded (0: a state
// written by a coordinator that did not record it) leaves its phases out.
func (t *Timing) Transition(namespace string, prev, next *rendezvous.State) {
	if t == nil || prev == nil || next == nil || prev.Generation != next.Generation {
		return
	}
	if prev.Phase == rendezvous.Waiting && next.Phase == rendezvous.Running {
		t.observe(namespace, PhaseJoining, next.StartedMs, next.JoinedMs)
		t.observe(namespace, PhaseReleasing, next.JoinedMs, next.ReleasedMs)
	}
	if prev.ReadyMs == 0 && next.ReadyMs != 0 {
		t.observe(namespace, PhaseStarting, next.ReleasedMs, next.ReadyMs)
		if next.StartedMs != 0 {
			t.total.WithLabelValues(namespace).Observe(seconds(next.StartedMs, next.ReadyMs))
		}
	}
}

func (t *Timing) observe(namespace, phase string, fromMs, toMs int64) {
	if fromMs == 0 || toMs == 0 {
		return
	}
	t.phase.WithLabelValues(namespace, phase).Observe(seconds(fromMs, toMs))
}

// seconds is the time between two Unix-millisecond moments, never
// negative: they may come from the clocks of two replicas.
func seconds(fromMs, toMs int64) float64 {
	return max(time.Duration(toMs-fromMs)*time.Millisecond, 0).Seconds()
}
