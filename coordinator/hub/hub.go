// Package hub keeps one live, in-memory view per group in a coordinator
// replica: a single etcd watch per group, shared by every agent stream that
// replica serves, and the place where the group's next transition is decided.
package hub

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/muster-dev/muster/coordinator/metrics"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/coordinator/store"
	"github.com/muster-dev/muster/podapi"
)

// Registry owns the hubs of one replica. A hub lives while someone holds it
// and for IdleTimeout after, so that a Join followed by a Watch reuses it.
type Registry struct {
	store       *store.Store
	log         *slog.Logger
	idleTimeout time.Duration
	// ReadyHook, when set before the first Acquire, hears every change of a
	// group's readiness or generation, with the ids of the group's members.
	// It must not block.
	ReadyHook func(k podapi.Key, generation int64, phase rendezvous.Phase, ready bool, members []string, message string)
	// Timing, when set before the first Acquire, observes every state
	// transition this replica's hubs write (the release, a generation
	// becoming ready): the time-to-ready histograms.
	Timing *metrics.Timing

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	hubs map[podapi.Key]*Hub
}

// NewRegistry returns a registry; Close stops every hub it started.
func NewRegistry(s *store.Store, log *slog.Logger, idleTimeout time.Duration) *Registry {
	ctx, cancel := context.WithCancel(context.Background())
	return &Registry{store: s, log: log, idleTimeout: idleTimeout, ctx: ctx, cancel: cancel, hubs: map[podapi.Key]*Hub{}}
}

// Close stops every hub and waits for them.
func (r *Registry) Close() {
	r.cancel()
	r.wg.Wait()
}

// Acquire returns the hub of group k, starting it if needed, once its first
// view is loaded. Call Release when done.
func (r *Registry) Acquire(ctx context.Context, k podapi.Key) (*Hub, error) {
	r.mu.Lock()
	h, ok := r.hubs[k]
	if !ok {
		h = newHub(r, k)
		r.hubs[k] = h
		r.wg.Add(1)
		go h.run()
	}
	h.refs++
	if h.idle != nil {
		h.idle.Stop()
		h.idle = nil
	}
	r.mu.Unlock()
	select {
	case <-h.loaded:
		return h, nil
	case <-ctx.Done():
		h.Release()
		return nil, fmt.Errorf("load group %s: %w", k, ctx.Err())
	}
}

// Release gives back a hub obtained from Acquire.
func (h *Hub) Release() {
	r := h.reg
	r.mu.Lock()
	defer r.mu.Unlock()
	h.refs--
	if h.refs == 0 {
		h.idle = time.AfterFunc(r.idleTimeout, func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			if h.refs == 0 && r.hubs[h.key] == h {
				delete(r.hubs, h.key)
				h.cancel()
			}
		})
	}
}

// Hub is one group's live view inside a replica.
type Hub struct {
	reg    *Registry
	key    podapi.Key
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	loaded chan struct{}

	// guarded by reg.mu
	refs int
	idle *time.Timer

	createMu sync.Mutex

	// mu guards the view and what is derived from it: the hub's own
	// goroutine writes under Lock; the many streams and joins only read,
	// under RLock, so a release's fan-out to thousands of streams does
	// not queue them one by one.
	mu      sync.RWMutex
	view    *rendezvous.View
	changed chan struct{} // closed and replaced when state or readiness changes
	ready   bool
	joined  int      // members joined in the current generation
	missing []string // what the current barrier waits for, when known
	rankOf  map[string]int
	waiters []revWaiter
	hooked  hookKey // what ReadyHook was last told

	// poke asks the hub's goroutine to reconcile again: a restart backoff
	// ended, with no etcd event to say so. wake is the pending timer.
	poke chan struct{}
	wake *time.Timer
}

type revWaiter struct {
	rev int64
	ch  chan struct{}
}

func newHub(r *Registry, k podapi.Key) *Hub {
	ctx, cancel := context.WithCancel(r.ctx)
	return &Hub{
		reg: r, key: k, ctx: ctx, cancel: cancel,
		log:     r.log.With("group", k.String()),
		loaded:  make(chan struct{}),
		changed: make(chan struct{}),
		rankOf:  map[string]int{},
		hooked:  hookKey{gen: -1},
		poke:    make(chan struct{}, 1),
	}
}

func (h *Hub) run() {
	defer h.reg.wg.Done()
	backoff := 50 * time.Millisecond
	first := true
	for h.ctx.Err() == nil {
		v, err := h.reg.store.Load(h.ctx, h.key)
		if err != nil {
			if h.ctx.Err() == nil {
				h.log.Warn("load group failed; retrying", "err", err, "retry_in", backoff)
			}
			select {
			case <-time.After(backoff):
			case <-h.ctx.Done():
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		h.mu.Lock()
		h.view = v
		h.refresh(true)
		h.mu.Unlock()
		if first {
			close(h.loaded)
			first = false
		}
		h.reconcile()
		h.watch(v.Rev + 1)
	}
}

// watch follows the group's keys from rev until the watch breaks (then the
// caller reloads) or the hub stops.
func (h *Hub) watch(rev int64) {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(h.ctx))
	defer cancel()
	s := h.reg.store
	wch := s.Client().Watch(ctx, s.GroupPrefix(h.key), clientv3.WithPrefix(), clientv3.WithRev(rev))
	for {
		var wresp clientv3.WatchResponse
		select {
		case <-h.poke:
			h.mu.Lock()
			h.refresh(false)
			h.mu.Unlock()
			h.reconcile()
			continue
		case r, ok := <-wch:
			if !ok {
				return
			}
			wresp = r
		}
		if err := wresp.Err(); err != nil {
			h.log.Warn("watch broke; reloading group", "err", err)
			return
		}
		h.mu.Lock()
		stateChanged := false
		for _, ev := range wresp.Events {
			kv := ev.Kv
			if err := s.Apply(h.view, string(kv.Key), kv.Value, kv.CreateRevision, kv.ModRevision, kv.Lease, ev.Type == clientv3.EventTypeDelete); err != nil {
				h.log.Error("skipping undecodable key", "key", string(kv.Key), "err", err)
				continue
			}
			if string(kv.Key) == s.GroupPrefix(h.key)+"state" {
				stateChanged = true
			}
		}
		if wresp.Header.Revision > h.view.Rev {
			h.view.Rev = wresp.Header.Revision
		}
		h.refresh(stateChanged)
		h.mu.Unlock()
		h.reconcile()
	}
}

// refresh recomputes the derived fields, wakes revision waiters and, when
// something agents must react to changed, every subscriber. h.mu is held.
func (h *Hub) refresh(stateChanged bool) {
	v := h.view
	if stateChanged {
		h.rankOf = map[string]int{}
		if v.State != nil {
			for r, id := range v.State.Assignment {
				h.rankOf[id] = r
			}
		}
	}
	h.joined, h.missing = 0, nil
	if st := v.State; st != nil {
		h.joined = v.JoinedCount(st.Generation)
		if st.Phase == rendezvous.Waiting {
			h.missing = missing(v)
			if at := rendezvous.ReleaseAt(v, time.Now()); !at.IsZero() && h.joined >= st.Size {
				h.missing = []string{fmt.Sprintf("the restart backoff (%s more)", time.Until(at).Round(100*time.Millisecond))}
			}
		}
	}
	ready := v.Ready()
	if stateChanged || ready != h.ready {
		h.ready = ready
		close(h.changed)
		h.changed = make(chan struct{})
	}
	h.tellReady(v, ready)
	kept := h.waiters[:0]
	for _, w := range h.waiters {
		if v.Rev >= w.rev {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	h.waiters = kept
}

// tellReady calls the registry's ReadyHook when the group's readiness or
// generation changed since it was last told. h.mu is held.
func (h *Hub) tellReady(v *rendezvous.View, ready bool) {
	hook := h.reg.ReadyHook
	if hook == nil || v.State == nil {
		return
	}
	now := hookKey{gen: v.State.Generation, phase: v.State.Phase, ready: ready}
	if now == h.hooked {
		return
	}
	h.hooked = now
	seen := map[string]bool{}
	var members []string
	for id := range v.State.Ranks {
		seen[id] = true
		members = append(members, id)
	}
	for id := range v.Members {
		if !seen[id] {
			members = append(members, id)
		}
	}
	msg := fmt.Sprintf("generation %d: %s", v.State.Generation, strings.ToLower(string(v.State.Phase)))
	switch {
	case ready:
		msg = fmt.Sprintf("generation %d: all %d ranks ready", v.State.Generation, len(v.State.Assignment))
	case v.State.Phase == rendezvous.Failed:
		msg = fmt.Sprintf("group failed in generation %d after %d restarts, not restarting: %s (member %s)", v.State.Generation, v.State.Restarts, v.State.FirstError, v.State.FailedMember)
	}
	hook(h.key, v.State.Generation, v.State.Phase, ready, members, msg)
}

type hookKey struct {
	gen   int64
	phase rendezvous.Phase
	ready bool
}

// missing names what the barrier waits for: members of earlier generations
// that have not rejoined, or, on a first start where every member gave an
// ordinal, the ordinals not yet seen. At most ten names.
func missing(v *rendezvous.View) []string {
	out := v.Missing()
	if len(out) == 0 && len(v.State.Ranks) == 0 {
		size, gen := int64(v.State.Size), v.State.Generation
		seen := make([]bool, size)
		for _, m := range v.Members {
			if m.Generation != gen {
				continue
			}
			if m.Ordinal == nil {
				return nil
			}
			if o := *m.Ordinal; o >= 0 && o < size {
				seen[o] = true
			}
		}
		for o := int64(0); o < size && len(out) < 10; o++ {
			if !seen[o] {
				out = append(out, fmt.Sprintf("ordinal %d", o))
			}
		}
	}
	if len(out) > 10 {
		out = append(out[:10:10], fmt.Sprintf("and %d more", len(out)-10))
	}
	return out
}

// reconcile applies the transition the view calls for. Only the hub's own
// goroutine calls it, so reading h.view without the lock is safe here.
func (h *Hub) reconcile() {
	now := time.Now()
	d, ok := rendezvous.Decide(h.view, now)
	if !ok {
		if at := rendezvous.ReleaseAt(h.view, now); !at.IsZero() {
			h.wakeAt(at)
		}
		return
	}
	prev := h.view.State
	swapped, err := h.reg.store.SwapState(h.ctx, h.key, h.view.StateRev, d.Next)
	switch {
	case err != nil:
		if h.ctx.Err() == nil {
			h.log.Warn("group transition failed; will retry on the next change", "reason", d.Reason, "err", err)
		}
	case swapped:
		h.log.Info(d.Reason, "generation", d.Next.Generation, "phase", string(d.Next.Phase))
		// Only the replica whose swap won observes, so each transition
		// is counted once across replicas.
		h.reg.Timing.Transition(h.key.Namespace, prev, &d.Next)
	}
	// Lost races are fine: another replica made the same decision, and the
	// watch brings its result.
}

// wakeAt makes the hub reconcile again at t.
func (h *Hub) wakeAt(t time.Time) {
	if h.wake != nil {
		h.wake.Stop()
	}
	h.wake = time.AfterFunc(time.Until(t)+10*time.Millisecond, func() {
		select {
		case h.poke <- struct{}{}:
		default:
		}
	})
}

// Read runs fn with the current view under the hub's shared lock: fn
// must not block, modify or keep v.
func (h *Hub) Read(fn func(v *rendezvous.View)) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	fn(h.view)
}

// WaitRev waits until the view includes etcd revision rev.
func (h *Hub) WaitRev(ctx context.Context, rev int64) error {
	h.mu.Lock()
	if h.view.Rev >= rev {
		h.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	h.waiters = append(h.waiters, revWaiter{rev: rev, ch: ch})
	h.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for group %s to reach revision %d: %w", h.key, rev, ctx.Err())
	case <-h.ctx.Done():
		return fmt.Errorf("group %s: coordinator shutting down", h.key)
	}
}

// CreateOnce runs create (which writes the group's state and returns the
// revision) unless the view already has a state, and waits until the view
// includes it. Calls are serialized, so a burst of first joins through one
// replica sends one creation to etcd.
//
// The callers behind the first pass the mutex one after another once the
// group exists: in the mutex profile of BenchmarkScale (4096 first joins
// at once) that is most of all waiting. Letting them all go at once (a
// channel closed when the creation is done) was tried and made the
// arrival slower, 2231-2332 ms against 1129-1569 (3 runs each): the
// handoff paces the burst of lease grants and puts that follows.
func (h *Hub) CreateOnce(ctx context.Context, create func() (int64, error)) error {
	h.createMu.Lock()
	defer h.createMu.Unlock()
	h.mu.Lock()
	exists := h.view.State != nil
	h.mu.Unlock()
	if exists {
		return nil
	}
	rev, err := create()
	if err != nil {
		return err
	}
	return h.WaitRev(ctx, rev)
}

// Observation is what one member's stream needs to know, read in O(1).
type Observation struct {
	State      *rendezvous.State // nil before the group exists; do not modify
	Member     rendezvous.Member
	IsMember   bool
	Rank       int // -1 when not in the current assignment
	Joined     int
	Missing    []string
	Ready      bool
	Leader     rendezvous.Member
	Changed    <-chan struct{}
	Generation int64
}

// Observe reads the group as member id sees it.
func (h *Hub) Observe(id string) Observation {
	h.mu.RLock()
	defer h.mu.RUnlock()
	o := Observation{State: h.view.State, Rank: -1, Joined: h.joined, Missing: h.missing, Ready: h.ready, Changed: h.changed}
	o.Member, o.IsMember = h.view.Members[id]
	if st := h.view.State; st != nil {
		o.Generation = st.Generation
		if r, ok := h.rankOf[id]; ok {
			o.Rank = r
		}
		if len(st.Assignment) > 0 {
			o.Leader = h.view.Members[st.Assignment[0]]
		}
	}
	return o
}

// GossipSeeds returns the gossip addresses (host:port) of up to n other
// members of the current assignment for member id to join gossip
// through: the leader, which every member contacts so that the group
// forms one cluster, then the ranks after id's, so that no one member
// answers everyone alone.
func (h *Hub) GossipSeeds(id string, n int) []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	st := h.view.State
	if st == nil || len(st.Assignment) == 0 || n <= 0 {
		return nil
	}
	var out []string
	add := func(mid string) {
		m, ok := h.view.Members[mid]
		if mid == id || !ok || m.GossipPort == 0 || m.Generation != st.Generation {
			return
		}
		out = append(out, net.JoinHostPort(m.Address, strconv.Itoa(m.GossipPort)))
	}
	as := st.Assignment
	add(as[0])
	start := 1
	if r, ok := h.rankOf[id]; ok {
		start = r + 1
	}
	// At most a few candidates per seed: members without a gossip port
	// (gossip off) would otherwise make every one of N streams walk the
	// whole assignment at release, N x N lookups.
	for i := 0; i < len(as)-1 && i < 4*n && len(out) < n; i++ {
		r := 1 + (start-1+i)%(len(as)-1) // ranks 1..len-1, from start on
		add(as[r])
	}
	return out
}

// Done is closed when the hub stops (coordinator shutdown or idle).
func (h *Hub) Done() <-chan struct{} { return h.ctx.Done() }
