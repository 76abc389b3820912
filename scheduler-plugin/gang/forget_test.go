package gang

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/component-base/metrics/testutil"

	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/test/podbuilder"
)

// A group deleted before it was bound (here: one member of two, waiting
// for the other) is forgotten with its last pod: muster_groups_waiting
// falls back and its first-seen time goes, while a group with a pod left
// stays counted. Driven through a real shared informer, as the scheduler's.
func TestDeletedGroupIsForgotten(t *testing.T) {
	registerMetrics()
	ctx := t.Context()
	cs := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(cs, 0)
	g := &Gang{firstSeen: map[podapi.Key]time.Time{}, waiting: map[podapi.Key]bool{}, reported: map[string]string{}}
	if err := g.usePods(factory.Core().V1().Pods().Informer()); err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

	gone, stays := podapi.Key{Namespace: "ns", Name: "gone"}, podapi.Key{Namespace: "ns", Name: "stays"}
	pods := map[podapi.Key][]string{gone: {"gone-0"}, stays: {"stays-0", "stays-1"}}
	for k, names := range pods {
		for _, n := range names {
			p := podbuilder.MakePod().Namespace("ns").Name(n).Group(k.Name).Size(3).Obj()
			if _, err := cs.CoreV1().Pods("ns").Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	until := func(what string, cond func() bool) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) { return cond(), nil }); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	until("the informer has all 3 pods", func() bool { return len(g.byGroup.List()) == 3 })
	for k, names := range pods {
		for _, n := range names {
			obj, _, _ := g.byGroup.GetByKey("ns/" + n)
			// 1 or 2 of 3 members exist: each group waits for the rest.
			if st := g.PreEnqueue(ctx, obj.(*v1.Pod)); st.IsSuccess() {
				t.Fatalf("PreEnqueue(%s) admitted a member of an incomplete group", n)
			}
		}
		g.mu.Lock()
		g.firstSeen[k] = time.Unix(1000, 0) // as the queue's sort would
		g.mu.Unlock()
	}
	waiting := func() float64 {
		v, err := testutil.GetGaugeMetricValue(groupsWaiting)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := waiting(); v != 2 {
		t.Fatalf("muster_groups_waiting = %v with two groups waiting; want 2", v)
	}

	// One of stays' two pods goes: the group is still there.
	if err := cs.CoreV1().Pods("ns").Delete(ctx, "stays-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// gone's only pod goes: the group is gone.
	if err := cs.CoreV1().Pods("ns").Delete(ctx, "gone-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	until("muster_groups_waiting falls to 1", func() bool { return waiting() == 1 })
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.waiting[gone] || !g.waiting[stays] {
		t.Errorf("waiting = %v; want only %s", g.waiting, stays)
	}
	if _, ok := g.firstSeen[gone]; ok {
		t.Errorf("first-seen time of deleted group %s kept", gone)
	}
	if _, ok := g.firstSeen[stays]; !ok {
		t.Errorf("first-seen time of %s, which still has a pod, dropped", stays)
	}
}
