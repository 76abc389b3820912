package gang

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/component-base/metrics/testutil"

	"github.com/muster-dev/muster/podapi"
)

func uids(n int, prefix string) []types.UID {
	out := make([]types.UID, n)
	for i := range out {
		out[i] = types.UID(fmt.Sprintf("%s-%d", prefix, i))
	}
	return out
}

func keys(gs []gated) []string {
	var out []string
	for _, g := range gs {
		out = append(out, g.key.Name)
	}
	return out
}

// Groups beyond the limit wait in the order they came, each is let
// through when a binding group's last member is bound (or the group is
// dropped), and a group with members already bound is never held back.
func TestBindGate(t *testing.T) {
	registerMetrics()
	// muster_groups_waiting_to_bind follows the queue.
	waitingToBind := func(want float64) {
		t.Helper()
		got, err := testutil.GetGaugeMetricValue(groupsWaitingToBind)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("muster_groups_waiting_to_bind = %v; want %v", got, want)
		}
	}
	at := time.Unix(0, 0)
	b := newBindGate(2)
	b.now = func() time.Time { return at }
	g := func(name string) podapi.Key { return podapi.Key{Namespace: "ns", Name: name} }
	admit := func(name string, n int, force bool) (bool, []string) {
		now, rel := b.admit(g(name), uids(n, name), force)
		return now, keys(rel)
	}

	for _, name := range []string{"a", "b"} {
		if now, rel := admit(name, 2, false); !now || rel != nil {
			t.Fatalf("%s: now %v, released %v; want let through with a free slot", name, now, rel)
		}
	}
	for _, name := range []string{"c", "d", "e"} {
		if now, _ := admit(name, 2, false); now {
			t.Fatalf("%s let through with 2 groups binding; want it queued", name)
		}
	}
	if binding, queued := b.sizes(); binding != 2 || queued != 3 {
		t.Fatalf("sizes %d binding, %d queued; want 2, 3", binding, queued)
	}
	waitingToBind(3)
	// c admitted again (a member re-reserved) keeps its place.
	if now, _ := admit("c", 2, false); now {
		t.Fatal("c let through on its second Permit")
	}
	// A group with a member bound goes ahead of the queue.
	if now, _ := admit("partial", 1, true); !now {
		t.Fatal("a partly bound group was held back")
	}
	if rel := keys(b.bound(g("a"))); rel != nil {
		t.Fatalf("released %v after a's first bind of 2", rel)
	}
	if rel := keys(b.bound(g("a"))); rel != nil {
		t.Fatalf("released %v with 2 still binding (b, partial)", rel)
	}
	if rel := keys(b.bound(g("partial"))); !slices.Equal(rel, []string{"c"}) {
		t.Fatalf("released %v when partial was bound; want [c], the first queued", rel)
	}
	waitingToBind(2)
	if !b.isBinding(g("c")) || b.isBinding(g("a")) {
		t.Fatal("c should be binding and a done")
	}
	// A queued group that is dropped leaves the queue; a binding one
	// frees its slot.
	if rel := keys(b.drop(g("d"))); rel != nil {
		t.Fatalf("dropping queued d released %v", rel)
	}
	if rel := keys(b.drop(g("b"))); !slices.Equal(rel, []string{"e"}) {
		t.Fatalf("dropping binding b released %v; want [e]", rel)
	}
	waitingToBind(0)
	// A bind of a group the gate does not know (let through before a
	// restart, or dropped) changes nothing.
	if rel := b.bound(g("unknown")); rel != nil {
		t.Fatalf("released %v on an unknown group's bind", keys(rel))
	}

	// Groups heard of for longer than staleBinding stop counting.
	if now, _ := admit("f", 2, false); now {
		t.Fatal("f let through with c and e binding")
	}
	at = at.Add(staleBinding + time.Second)
	if b.isBinding(g("c")) {
		t.Fatal("c still binding after staleBinding")
	}
	now, rel := admit("g", 2, false)
	if !now || !slices.Equal(rel, []string{"f"}) {
		t.Fatalf("after c and e went stale: g now %v, released %v; want f (queued first) and g let through", now, rel)
	}
	if stale := b.takeStale(); len(stale) != 2 {
		t.Fatalf("stale %v; want c and e", stale)
	}
}
