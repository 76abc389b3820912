package gang

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

// Metrics are served on the scheduler's own /metrics endpoint.
var (
	groupBindDuration = metrics.NewHistogram(&metrics.HistogramOpts{
		Subsystem:      "muster",
		Name:           "group_bind_duration_seconds",
		Help:           "Time from a group's first pod being created to its last member being bound.",
		Buckets:        metrics.ExponentialBuckets(0.01, 2, 16),
		StabilityLevel: metrics.ALPHA,
	})
	groupsWaiting = metrics.NewGauge(&metrics.GaugeOpts{
		Subsystem:      "muster",
		Name:           "groups_waiting",
		Help:           "Groups seen by the scheduler and not yet fully bound (missing members, or waiting for capacity).",
		StabilityLevel: metrics.ALPHA,
	})
	groupsWaitingToBind = metrics.NewGauge(&metrics.GaugeOpts{
		Subsystem:      "muster",
		Name:           "groups_waiting_to_bind",
		Help:           "Groups with every member reserved, waiting at Permit for another group to finish binding (groups bind one at a time).",
		StabilityLevel: metrics.ALPHA,
	})
	invalidMembers = metrics.NewCounter(&metrics.CounterOpts{
		Subsystem:      "muster",
		Name:           "invalid_group_members_total",
		Help:           "Pods kept unschedulable because their muster annotations are invalid.",
		StabilityLevel: metrics.ALPHA,
	})
	admissionAttempts = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      "muster",
		Name:           "group_admission_attempts_total",
		Help:           "Whole-group fit checks, by result (fits, waiting).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	metricsOnce sync.Once
)

func registerMetrics() {
	metricsOnce.Do(func() { RegisterMetrics(legacyregistry.MustRegister) })
}

// RegisterMetrics registers the plugin's metrics with register (New does,
// once, with the scheduler's own registry; a test may pass a registry of
// its own) and starts each result of muster_group_admission_attempts_total
// at zero, so that its rate has a series from the first scrape.
func RegisterMetrics(register func(...metrics.Registerable)) {
	register(groupBindDuration, groupsWaiting, groupsWaitingToBind, invalidMembers, admissionAttempts)
	for _, fits := range []bool{true, false} {
		admissionAttempts.WithLabelValues(resultLabel(fits))
	}
}
