package metrics

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/podapi"
)

type loader struct {
	views []*rendezvous.View
	err   error
}

func (l loader) LoadAll(context.Context) ([]*rendezvous.View, error) { return l.views, l.err }

func view(ns, name string, st *rendezvous.State, members ...rendezvous.Member) *rendezvous.View {
	v := &rendezvous.View{Key: podapi.Key{Namespace: ns, Name: name}, State: st, Members: map[string]rendezvous.Member{}}
	for _, m := range members {
		v.Members[m.ID] = m
	}
	return v
}

func TestCollector(t *testing.T) {
	l := loader{views: []*rendezvous.View{
		// Restarted once; generation 1 has both members, one ready; a
		// member left over from generation 0 does not count.
		view("ns", "a", &rendezvous.State{Size: 2, Generation: 1, Phase: rendezvous.Running, Restarts: 1},
			rendezvous.Member{ID: "a-0", Generation: 1, State: rendezvous.StateReady},
			rendezvous.Member{ID: "a-1", Generation: 1, State: rendezvous.StateLaunching},
			rendezvous.Member{ID: "a-2", Generation: 0}),
		view("ns", "b", &rendezvous.State{Size: 4, Phase: rendezvous.Waiting}, rendezvous.Member{ID: "b-0"}),
		// Members whose group state is not written yet: no group.
		view("ns", "c", nil, rendezvous.Member{ID: "c-0"}),
	}}
	want := `
# HELP muster_group_members_joined Members that joined the group's current generation.
# TYPE muster_group_members_joined gauge
muster_group_members_joined{group="a",namespace="ns"} 2
muster_group_members_joined{group="b",namespace="ns"} 1
# HELP muster_group_members_ready Members of the current generation whose runtime reported ready.
# TYPE muster_group_members_ready gauge
muster_group_members_ready{group="a",namespace="ns"} 1
muster_group_members_ready{group="b",namespace="ns"} 0
# HELP muster_group_phase The phase of the group's current generation: 1 for its phase, 0 for the others.
# TYPE muster_group_phase gauge
muster_group_phase{group="a",namespace="ns",phase="Completed"} 0
muster_group_phase{group="a",namespace="ns",phase="Failed"} 0
muster_group_phase{group="a",namespace="ns",phase="Running"} 1
muster_group_phase{group="a",namespace="ns",phase="Waiting"} 0
muster_group_phase{group="b",namespace="ns",phase="Completed"} 0
muster_group_phase{group="b",namespace="ns",phase="Failed"} 0
muster_group_phase{group="b",namespace="ns",phase="Running"} 0
muster_group_phase{group="b",namespace="ns",phase="Waiting"} 1
# HELP muster_group_restarts_total Restarts of the group since it was created.
# TYPE muster_group_restarts_total counter
muster_group_restarts_total{group="a",namespace="ns"} 1
muster_group_restarts_total{group="b",namespace="ns"} 0
# HELP muster_group_size Members a group expects.
# TYPE muster_group_size gauge
muster_group_size{group="a",namespace="ns"} 2
muster_group_size{group="b",namespace="ns"} 4
# HELP muster_groups Groups by phase of their current generation.
# TYPE muster_groups gauge
muster_groups{phase="Completed"} 0
muster_groups{phase="Failed"} 0
muster_groups{phase="Running"} 1
muster_groups{phase="Waiting"} 1
`
	if err := testutil.CollectAndCompare(NewCollector(l, time.Second), strings.NewReader(want),
		"muster_groups", "muster_group_size", "muster_group_members_joined", "muster_group_members_ready", "muster_group_restarts_total", "muster_group_phase"); err != nil {
		t.Error(err)
	}
}

func TestCollectorFailsWithoutEtcd(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(loader{err: errors.New("etcd: context deadline exceeded")}, time.Second))
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "etcd") {
		t.Errorf("gather with etcd away: err = %v, want the etcd error (a failed scrape, not zero groups)", err)
	}
}
