package gang

import (
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"

	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/test/podbuilder"
)

func queued(name, grp string, ordinal string, created time.Time, prio int32) fwk.QueuedEntityInfo {
	p := podbuilder.MakePod().Namespace("ns").Name(name).CreationTimestamp(created).Priority(prio)
	if grp != "" {
		p.Group(grp)
	}
	if ordinal != "" {
		p.Label(appsv1.PodIndexLabel, ordinal)
	}
	pi, _ := framework.NewPodInfo(p.Obj())
	return &framework.QueuedPodInfo{PodInfo: pi, QueueingParams: framework.QueueingParams{Timestamp: created}}
}

func TestLessServesGroupsFirstComeAndKeepsMembersTogether(t *testing.T) {
	g := &Gang{firstSeen: map[podapi.Key]time.Time{}}
	t0 := time.Unix(1000, 0)
	// Group a was created first; its member a-10 arrives late (created
	// after b's members) but still sorts with its group, by ordinal.
	a0 := queued("a-0", "a", "0", t0, 0)
	a10 := queued("a-10", "a", "10", t0.Add(5*time.Second), 0)
	a2 := queued("a-2", "a", "2", t0.Add(time.Second), 0)
	b0 := queued("b-0", "b", "0", t0.Add(2*time.Second), 0)
	solo := queued("solo", "", "", t0.Add(3*time.Second), 0)
	urgent := queued("urgent", "", "", t0.Add(9*time.Second), 100)
	// Seed first-seen times as the queue would when pods arrive.
	for _, e := range []fwk.QueuedEntityInfo{a0, a2, b0, a10} {
		g.sortKey(e)
	}
	order := []fwk.QueuedEntityInfo{urgent, a0, a2, a10, b0, solo}
	for i := range order {
		for j := range order {
			if got, want := g.Less(order[i], order[j]), i < j; got != want {
				t.Errorf("Less(%s, %s) = %v, want %v", name(order[i]), name(order[j]), got, want)
			}
		}
	}
}

func name(e fwk.QueuedEntityInfo) string {
	return e.(*framework.QueuedPodInfo).Pod.Name
}
