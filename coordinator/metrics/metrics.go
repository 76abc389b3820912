// Package metrics exports the coordinator's view of its groups to
// Prometheus. The gauges and counters of Collector are read from etcd at
// scrape time, so every replica reports the same cluster-wide values
// (aggregate with max, not sum) and nothing is lost when a replica
// restarts. The histograms of Timing are observed by the replica that made
// each transition (aggregate with sum).
package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/muster-dev/muster/coordinator/rendezvous"
)

// NewRegistry returns what a replica serves on /metrics: the Go runtime's
// and the process's metrics, the groups load reads (Collector, a scrape
// waiting at most timeout for etcd) and timing's histograms (if any).
func NewRegistry(load Loader, timeout time.Duration, timing *Timing) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		NewCollector(load, timeout),
	)
	if timing != nil {
		reg.MustRegister(timing)
	}
	return reg
}

// Loader reads every group; *store.Store is one.
type Loader interface {
	LoadAll(ctx context.Context) ([]*rendezvous.View, error)
}

var phases = []rendezvous.Phase{rendezvous.Waiting, rendezvous.Running, rendezvous.Completed, rendezvous.Failed}

var (
	groupsDesc = prometheus.NewDesc("muster_groups",
		"Groups by phase of their current generation.", []string{"phase"}, nil)
	sizeDesc = prometheus.NewDesc("muster_group_size",
		"Members a group expects.", []string{"namespace", "group"}, nil)
	joinedDesc = prometheus.NewDesc("muster_group_members_joined",
		"Members that joined the group's current generation.", []string{"namespace", "group"}, nil)
	readyDesc = prometheus.NewDesc("muster_group_members_ready",
		"Members of the current generation whose runtime reported ready.", []string{"namespace", "group"}, nil)
	generationDesc = prometheus.NewDesc("muster_group_generation",
		"The group's current generation (0 until its first restart).", []string{"namespace", "group"}, nil)
	restartsDesc = prometheus.NewDesc("muster_group_restarts_total",
		"Restarts of the group since it was created.", []string{"namespace", "group"}, nil)
	phaseDesc = prometheus.NewDesc("muster_group_phase",
		"The phase of the group's current generation: 1 for its phase, 0 for the others.", []string{"namespace", "group", "phase"}, nil)
)

// Collector is a prometheus.Collector over the groups in etcd.
type Collector struct {
	load    Loader
	timeout time.Duration
}

// NewCollector returns a Collector that reads groups with load; a scrape
// waits at most timeout for etcd.
func NewCollector(load Loader, timeout time.Duration) *Collector {
	return &Collector{load: load, timeout: timeout}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{groupsDesc, sizeDesc, joinedDesc, readyDesc, generationDesc, restartsDesc, phaseDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. When etcd cannot be read the
// scrape fails (an invalid metric), rather than reporting zero groups.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	views, err := c.load.LoadAll(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(groupsDesc, err)
		return
	}
	byPhase := map[rendezvous.Phase]int{}
	for _, v := range views {
		if v.State == nil {
			continue // members of a group whose state is not written yet
		}
		st := v.State
		byPhase[st.Phase]++
		labels := []string{v.Key.Namespace, v.Key.Name}
		joined := v.Joined(st.Generation)
		ready := 0
		for _, m := range joined {
			if m.State == rendezvous.StateReady {
				ready++
			}
		}
		ch <- prometheus.MustNewConstMetric(sizeDesc, prometheus.GaugeValue, float64(st.Size), labels...)
		ch <- prometheus.MustNewConstMetric(joinedDesc, prometheus.GaugeValue, float64(len(joined)), labels...)
		ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, float64(ready), labels...)
		ch <- prometheus.MustNewConstMetric(generationDesc, prometheus.GaugeValue, float64(st.Generation), labels...)
		ch <- prometheus.MustNewConstMetric(restartsDesc, prometheus.CounterValue, float64(st.Restarts), labels...)
		// Every phase, as kube-state-metrics does for pods, so that an
		// alert on one phase sees the group leave it.
		for _, p := range phases {
			in := 0.0
			if st.Phase == p {
				in = 1
			}
			ch <- prometheus.MustNewConstMetric(phaseDesc, prometheus.GaugeValue, in, v.Key.Namespace, v.Key.Name, string(p))
		}
	}
	// Every phase, zeros included, so that alerts on a phase see 0 rather
	// than no data.
	for _, p := range phases {
		ch <- prometheus.MustNewConstMetric(groupsDesc, prometheus.GaugeValue, float64(byPhase[p]), string(p))
	}
}
