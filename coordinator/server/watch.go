package server

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/coordinator/hub"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/podapi/names"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// gossipSeeds is how many peers an assignment names for the member to
// join gossip through. memberlist's join is a full state exchange (TCP)
// with each peer contacted; contacting every peer made N members do N x N
// exchanges at once, which on a busy host starved the probes gossip
// relies on. The rest is learnt by gossip.
const gossipSeeds = 3

// memberGrace is how long a stream waits for a member record it has not
// seen yet (the hub may lag the Join that wrote it by a watch round-trip).
const memberGrace = 10 * time.Second

// Watch streams one member's view of the group. While the stream is open
// this replica keeps the member's lease alive; when the agent goes away the
// lease runs out after MemberTTL and the group restarts without it.
func (s *Server) Watch(req *musterv1.WatchRequest, stream musterv1.Rendezvous_WatchServer) error {
	ctx := stream.Context()
	k, err := groupKey(req.GetGroup())
	if err != nil {
		return invalid("watch: %v", err)
	}
	id := req.GetMemberId()
	if err := names.ValidateName("member_id", id, names.MaxMemberIDLen); err != nil {
		return invalid("watch group %q: %v", k.String(), err)
	}
	if err := auth.FromContext(ctx).ActAs(k.Namespace, k.Name, id); err != nil {
		return err
	}
	h, err := s.hubs.Acquire(ctx, k)
	if err != nil {
		return internal(err)
	}
	defer h.Release()

	w := &watcher{srv: s, hub: h, k: k, id: id, stream: stream, sentRestart: -1, sentAssign: -1, lastJoined: -1, sentReady: -1}
	defer w.stopKeepAlive()
	ticker := time.NewTicker(s.opts.ProgressInterval)
	defer ticker.Stop()
	start := time.Now()
	seen := false
	closed := func() error {
		if seen {
			s.streamClosed(k, id, h)
		}
		return nil
	}
	for {
		o := h.Observe(id)
		switch {
		case o.IsMember:
			seen = true
			w.keepAlive(ctx, o.Member.Lease)
		case o.State != nil && o.State.Phase.Terminal():
			// Terminal groups are reported even to members already gone.
		case seen:
			return status.Errorf(codes.NotFound, "watch group %q as %q: membership lost (the lease expired or the member left); join again", k.String(), id)
		case time.Since(start) > memberGrace:
			return status.Errorf(codes.NotFound, "watch group %q as %q: not a member; call Join first", k.String(), id)
		}
		done, err := w.step(o)
		if err != nil || done {
			return err
		}
		select {
		case <-o.Changed:
		case <-ticker.C:
		case _, ok := <-w.renewed:
			if !ok {
				w.renewed = nil
				if ctx.Err() != nil {
					// The keep-alive ended with the stream, whose
					// context is its own: the stream closed (below).
					return closed()
				}
				// The lease is gone (or etcd's stream broke): the next
				// pass rereads the member.
			}
		case <-h.Done():
			return status.Error(codes.Unavailable, "coordinator replica shutting down; reconnect")
		case <-ctx.Done():
			return closed()
		}
	}
}

// streamClosed checks, when a member's stream ends without the member
// leaving, whether its agent is still there. An agent that was killed
// (or crashed) had its sockets closed by the kernel at once: its gossip
// port refuses the coordinator's dial, and the group restarts now rather
// than after gossip's suspicion period or the lease. An agent that is
// only reconnecting answers, and nothing happens.
func (s *Server) streamClosed(k podapi.Key, id string, h *hub.Hub) {
	o := h.Observe(id)
	if !o.IsMember || o.State == nil || o.State.Phase.Terminal() || o.Member.GossipPort == 0 {
		return
	}
	gen := o.Member.Generation
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := s.confirmLost(ctx, k, id, "coordinator: its watch stream closed", gen, true); err != nil {
			s.log.Warn("check a member whose stream closed", "group", k.String(), "member", id, "err", err)
		}
	}()
}

type watcher struct {
	srv         *Server
	hub         *hub.Hub
	k           podapi.Key
	id          string
	stream      musterv1.Rendezvous_WatchServer
	sentRestart int64
	sentAssign  int64
	lastJoined  int
	lastGen     int64
	lastSent    time.Time
	// sentReady is the readiness last reported, as generation*2+ready, so
	// that a new generation's first report always goes out.
	sentReady int64

	lease  int64
	stopKA context.CancelFunc
	// renewed carries etcd's answers to the lease's keep-alives and is
	// closed when they end. Watch's own loop reads it: a goroutine per
	// member only to drain it was a quarter of the coordinator's
	// goroutines.
	renewed <-chan *clientv3.LeaseKeepAliveResponse
}

// step sends what the observation calls for; done means the stream ends.
func (w *watcher) step(o hub.Observation) (done bool, err error) {
	st := o.State
	if st == nil {
		return false, nil
	}
	send := func(ev *musterv1.GroupEvent) error {
		w.lastSent = time.Now()
		return w.stream.Send(ev)
	}
	switch st.Phase {
	case rendezvous.Completed:
		return true, send(&musterv1.GroupEvent{Event: &musterv1.GroupEvent_Completed{Completed: &musterv1.Completed{Generation: st.Generation}}})
	case rendezvous.Failed:
		return true, send(&musterv1.GroupEvent{Event: &musterv1.GroupEvent_Failed{Failed: &musterv1.Failed{Generation: st.Generation, Reason: st.FirstError, MemberId: st.FailedMember}}})
	}
	if !o.IsMember {
		return false, nil
	}
	gen := o.Member.Generation
	switch {
	case st.Generation > gen:
		if w.sentRestart < st.Generation {
			w.sentRestart = st.Generation
			return false, send(&musterv1.GroupEvent{Event: &musterv1.GroupEvent_Restart{Restart: &musterv1.Restart{Generation: st.Generation, Reason: st.LastError}}})
		}
	case st.Phase == rendezvous.Waiting:
		// Progress goes out when the count changes, throttled by the
		// caller's ticker, and at least every few seconds as a heartbeat.
		if o.Joined != w.lastJoined || gen != w.lastGen || time.Since(w.lastSent) > 5*time.Second {
			w.lastJoined, w.lastGen = o.Joined, gen
			return false, send(&musterv1.GroupEvent{Event: &musterv1.GroupEvent_Progress{Progress: &musterv1.Progress{
				Generation: st.Generation, Joined: int32(o.Joined), Size: int32(st.Size), WaitingFor: o.Missing,
			}}})
		}
	case st.Phase == rendezvous.Running:
		if o.Rank < 0 {
			return true, status.Errorf(codes.ResourceExhausted, "group %q released generation %d with %d members and %q is not one of them; check --size and the member ids", w.k.String(), st.Generation, st.Size, w.id)
		}
		if w.sentAssign < st.Generation {
			w.sentAssign = st.Generation
			if err := send(&musterv1.GroupEvent{Event: &musterv1.GroupEvent_Assignment{Assignment: &musterv1.Assignment{
				Generation: st.Generation, Rank: int32(o.Rank), WorldSize: int32(len(st.Assignment)),
				LeaderAddress: st.LeaderAddress, MasterPort: int32(st.MasterPort), LeaderMemberId: st.Assignment[0],
				GossipKey:   w.srv.GossipKey(&musterv1.GroupRef{Namespace: w.k.Namespace, Name: w.k.Name}, st.Generation),
				GossipSeeds: w.hub.GossipSeeds(w.id, gossipSeeds),
			}}}); err != nil {
				return false, err
			}
		}
		ready := st.Generation * 2
		if o.Ready {
			ready++
		}
		if w.sentReady != ready {
			w.sentReady = ready
			return false, send(&musterv1.GroupEvent{Event: &musterv1.GroupEvent_Readiness{Readiness: &musterv1.Readiness{Generation: st.Generation, Ready: o.Ready}}})
		}
	}
	return false, nil
}

// keepAlive keeps lease alive while the stream lasts, switching when the
// member's record moves to a new lease.
func (w *watcher) keepAlive(ctx context.Context, lease int64) {
	if lease == w.lease || lease == 0 {
		return
	}
	w.stopKeepAlive()
	w.lease = lease
	kctx, cancel := context.WithCancel(ctx)
	w.stopKA = cancel
	ch, err := w.srv.store.Client().KeepAlive(kctx, clientv3.LeaseID(lease))
	if err != nil {
		w.srv.log.Warn("keep member lease alive", "group", w.k.String(), "member", w.id, "err", fmt.Errorf("lease %x: %w", lease, err))
		w.renewed = nil
		return
	}
	w.renewed = ch
}

func (w *watcher) stopKeepAlive() {
	if w.stopKA != nil {
		w.stopKA()
		w.stopKA = nil
	}
}
