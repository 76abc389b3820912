package gang

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/muster-dev/muster/podapi"
)

// maxBindingGroups is how many released groups bind at once. A group whose
// members are all reserved while one is binding waits at Permit, holding
// only the scheduler's reservation (nothing is on a node yet), and is let
// through when that one is bound in full.
//
// Binding goes one API call per member. Released all at once, a wave of
// groups queued their binds behind each other in the apiserver, and several
// groups at a time had some members on nodes and some not (make bench,
// contention: up to 88 GPUs held by incomplete groups, 328 in a full run,
// where upstream-gang held 64-72). One at a time, a group's binds run side
// by side and at most one group is ever incomplete on nodes (56 GPUs there).
// It costs rate: each group's binds wait for the previous group's (make
// bench, 100 groups of 8, 3 runs each: one at a time 122-128 pods/s and 7
// GPUs held by incomplete groups at most; 4 at a time 135-166 pods/s, 15
// GPUs, but 168 GPUs under contention; unbounded 163-193 pods/s, 258 GPUs).
// At most one group half-bound is the promise, so one it is.
const maxBindingGroups = 1

// staleBinding is how long a group may hold the bind gate. A group's binds
// normally all land within tens of milliseconds; one that takes longer (a
// PreBind that provisions volumes, a slow admission webhook) stops holding
// the others back after this, and binds on uncounted. It also keeps a
// report that never comes (PostBind for each bound member, Unreserve for a
// failed one) from closing the gate for good.
const staleBinding = 2 * time.Second

// bindGate lets released groups into binding maxBindingGroups at a time, in
// the order their last member was reserved.
type bindGate struct {
	mu      sync.Mutex
	max     int
	binding map[podapi.Key]*binding
	queue   []gated
	stale   []podapi.Key // dropped by dropStale, not yet logged
	now     func() time.Time
}

// binding is a group let into binding: binds still to come, and since when.
type binding struct {
	left  int
	since time.Time
}

// gated is a group whose members are all reserved, waiting for a slot.
type gated struct {
	key  podapi.Key
	pods []types.UID // the members waiting at Permit
}

func newBindGate(max int) *bindGate {
	return &bindGate{max: max, binding: map[podapi.Key]*binding{}, now: time.Now}
}

// admit lets group k, with pods reserved and waiting at Permit, bind now
// (now) or queues it. A group with members already on nodes (force) binds
// at once: holding it back would only keep it incomplete longer. release
// is other groups let through meanwhile (a slot freed by a stale group).
func (b *bindGate) admit(k podapi.Key, pods []types.UID, force bool) (now bool, release []gated) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if bg, ok := b.binding[k]; ok {
		bg.left = len(pods)
		return true, nil
	}
	queued := false
	for i := range b.queue {
		if b.queue[i].key == k {
			b.queue[i].pods, queued = pods, true
		}
	}
	switch {
	case queued:
	case force:
		b.binding[k] = &binding{left: len(pods), since: b.now()}
		return true, b.next()
	default:
		b.queue = append(b.queue, gated{key: k, pods: pods})
	}
	for _, g := range b.next() {
		if g.key == k {
			now = true
			continue
		}
		release = append(release, g)
	}
	return now, release
}

// bound records one member of k bound, and returns the groups to let
// through if that was k's last.
func (b *bindGate) bound(k podapi.Key) []gated {
	b.mu.Lock()
	defer b.mu.Unlock()
	bg, ok := b.binding[k]
	if !ok {
		return nil
	}
	if bg.left--; bg.left > 0 {
		return nil
	}
	delete(b.binding, k)
	return b.next()
}

// drop forgets k, binding or queued (a member was rejected, or failed to
// bind), and returns the groups to let through in its place.
func (b *bindGate) drop(k podapi.Key) []gated {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.binding, k)
	for i := range b.queue {
		if b.queue[i].key == k {
			b.queue = append(b.queue[:i], b.queue[i+1:]...)
			break
		}
	}
	return b.next()
}

// isBinding says whether k is let through and not yet done.
func (b *bindGate) isBinding(k podapi.Key) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	bg, ok := b.binding[k]
	return ok && b.now().Sub(bg.since) <= staleBinding
}

// sizes returns how many groups are binding and how many wait.
func (b *bindGate) sizes() (binding, queued int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.binding), len(b.queue)
}

// next moves queued groups into the free slots and returns them, and
// sets muster_groups_waiting_to_bind to the groups left queued. Every
// change to the queue ends here. b.mu is held.
func (b *bindGate) next() []gated {
	b.dropStale()
	var out []gated
	for len(b.queue) > 0 && len(b.binding) < b.max {
		g := b.queue[0]
		b.queue = b.queue[1:]
		b.binding[g.key] = &binding{left: len(g.pods), since: b.now()}
		out = append(out, g)
	}
	groupsWaitingToBind.Set(float64(len(b.queue)))
	return out
}

// dropStale forgets groups binding for longer than staleBinding. b.mu is
// held.
func (b *bindGate) dropStale() {
	now := b.now()
	for k, bg := range b.binding {
		if now.Sub(bg.since) > staleBinding {
			delete(b.binding, k)
			b.stale = append(b.stale, k)
		}
	}
}

// takeStale returns the groups dropStale forgot since the last call.
func (b *bindGate) takeStale() []podapi.Key {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.stale
	b.stale = nil
	return s
}
