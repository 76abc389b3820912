package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/podapi/names"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// reportsKept is how long who reported a member lost is remembered.
const reportsKept = 30 * time.Second

type lostReports struct {
	first time.Time
	by    map[string]bool
}

// aliveFor is how long a peer whose agent answered a check is believed
// alive without another dial.
const aliveFor = time.Second

// peerProbeTimeouts bound the coordinator's own checks of a peer that
// gossip declared dead (see answers).
var peerProbeTimeouts = []time.Duration{300 * time.Millisecond, time.Second}

// streamHold is how long a connection to the gossip port of a member whose
// stream just closed must stay open for its agent to count as alive.
const streamHold = 200 * time.Millisecond

// answers dials addr (a peer's gossip port) and returns nil when something
// answered, else why not. A refused connection proves the agent gone at
// once. A dial that times out proves less: a coordinator starved of CPU
// times out on live peers too. It is believed when another member has
// reported the same peer (corroborated: a host cut off is lost to all its
// peers at once, while a busy reporter's suspicion is its own), and is
// otherwise tried once more, longer.
//
// With hold, a connection that is accepted must also stay open that long:
// an agent being killed has its sockets closed one after another, and its
// gossip port may still take a connection just after its stream closed;
// the kernel then resets that connection.
func answers(addr string, corroborated func() bool, hold time.Duration) error {
	var err error
	for i, t := range peerProbeTimeouts {
		var c net.Conn
		if c, err = net.DialTimeout("tcp", addr, t); err == nil {
			defer c.Close()
			if hold <= 0 {
				return nil
			}
			c.SetReadDeadline(time.Now().Add(hold))
			if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("connected, then %w: the agent is exiting", err)
			}
			return nil
		}
		if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
			return err // refused, unreachable: nobody there
		}
		if i == 0 && corroborated() {
			return fmt.Errorf("%w; reported lost by more than one member", err)
		}
	}
	return err
}

// noteReport records that reporter reported member id (group/member) of
// generation gen lost, and returns whether more than one member has.
func (s *Server) noteReport(id, reporter string, gen int64) func() bool {
	key := fmt.Sprintf("%s@%d", id, gen)
	now := time.Now()
	s.aliveMu.Lock()
	defer s.aliveMu.Unlock()
	// Old records go in a sweep every reportsKept, not on every report:
	// reports come in bursts, when gossip errs the most.
	if now.Sub(s.reportsSwept) > reportsKept {
		s.reportsSwept = now
		for k, r := range s.reportedBy {
			if now.Sub(r.first) > reportsKept {
				delete(s.reportedBy, k)
			}
		}
	}
	r := s.reportedBy[key]
	if r == nil {
		r = &lostReports{first: now, by: map[string]bool{}}
		s.reportedBy[key] = r
	}
	r.by[reporter] = true
	return func() bool {
		s.aliveMu.Lock()
		defer s.aliveMu.Unlock()
		return len(r.by) > 1
	}
}

// ReportPeerLost acts on a peer that a member's gossip declared dead. It
// confirms first, so that a false suspicion restarts nothing: the lost
// peer's agent must no longer accept connections on its gossip port. Then
// it removes the member (revoking its lease), and the group restarts
// exactly as when the lease runs out, only sooner.
func (s *Server) ReportPeerLost(ctx context.Context, req *musterv1.ReportPeerLostRequest) (*musterv1.ReportPeerLostResponse, error) {
	k, err := groupKey(req.GetGroup())
	if err != nil {
		return nil, invalid("report lost peer: %v", err)
	}
	for _, f := range []struct{ name, v string }{{"member_id", req.GetMemberId()}, {"lost_member_id", req.GetLostMemberId()}} {
		if err := names.ValidateName(f.name, f.v, names.MaxMemberIDLen); err != nil {
			return nil, invalid("report lost peer in group %q: %v", k.String(), err)
		}
	}
	if err := auth.FromContext(ctx).ActAs(k.Namespace, k.Name, req.GetMemberId()); err != nil {
		return nil, err
	}
	// Only a member of the group may report one of its peers: a caller
	// that left, or never joined, learns nothing and restarts nothing.
	// Asked of the group's live view, not etcd: when gossip errs, every
	// member may report every peer at once, and N x N reads would starve
	// the coordinator of the very status reports that end the episode.
	h, err := s.hubs.Acquire(ctx, k)
	if err != nil {
		return nil, internal(err)
	}
	isMember := h.Observe(req.GetMemberId()).IsMember
	h.Release()
	if !isMember {
		return nil, status.Errorf(codes.PermissionDenied, "report lost peer in group %q: %q is not a member of the group; only members report their peers", k.String(), req.GetMemberId())
	}
	return s.confirmLost(ctx, k, req.GetLostMemberId(), req.GetMemberId(), req.GetGeneration(), false)
}

// confirmLost runs checkLost for member lost of generation gen, once for
// every concurrent report of it, and not again for a moment when its
// agent just answered. fresh evidence (its stream just closed) is checked
// on its own: an answer from before it is no answer now.
func (s *Server) confirmLost(ctx context.Context, k podapi.Key, lost, reporter string, gen int64, fresh bool) (*musterv1.ReportPeerLostResponse, error) {
	id := k.String() + "/" + lost
	s.aliveMu.Lock()
	at, recent := s.aliveAt[id]
	s.aliveMu.Unlock()
	if recent && time.Since(at) < aliveFor && !fresh {
		return &musterv1.ReportPeerLostResponse{Reason: fmt.Sprintf("peer's agent answered %s ago", time.Since(at).Round(time.Millisecond))}, nil
	}
	corroborated := s.noteReport(id, reporter, gen)
	flight, hold := fmt.Sprintf("%s@%d", id, gen), time.Duration(0)
	if fresh {
		flight, hold = flight+" "+reporter, streamHold
	}
	v, err, _ := s.lostChecks.Do(flight, func() (any, error) {
		return s.checkLost(context.WithoutCancel(ctx), k, lost, reporter, gen, corroborated, hold)
	})
	if err != nil {
		return nil, err
	}
	return v.(*musterv1.ReportPeerLostResponse), nil
}

// checkLost confirms a gossip report that member lost is dead: its record
// still names a gossip port and nothing answers there. Confirmed, its
// record is removed (the group restarts); otherwise it is left to its
// lease.
func (s *Server) checkLost(ctx context.Context, k podapi.Key, lost, reporter string, gen int64, corroborated func() bool, hold time.Duration) (*musterv1.ReportPeerLostResponse, error) {
	m, ok, err := s.store.GetMember(ctx, k, lost)
	if err != nil {
		return nil, internal(err)
	}
	if !ok {
		return &musterv1.ReportPeerLostResponse{Confirmed: true, Reason: "already gone"}, nil
	}
	if m.Generation < gen {
		// The peer is between generations (stopping its runtime); its
		// gossip may be restarting. Leave it to its lease.
		return &musterv1.ReportPeerLostResponse{Reason: "peer is in an older generation"}, nil
	}
	if m.GossipPort == 0 {
		return &musterv1.ReportPeerLostResponse{Reason: "peer does not gossip; its lease decides"}, nil
	}
	addr := net.JoinHostPort(m.Address, strconv.Itoa(m.GossipPort))
	dialErr := answers(addr, corroborated, hold)
	if dialErr == nil {
		s.aliveMu.Lock()
		now := time.Now()
		s.aliveAt[k.String()+"/"+lost] = now
		for id, at := range s.aliveAt {
			if now.Sub(at) > aliveFor {
				delete(s.aliveAt, id)
			}
		}
		s.aliveMu.Unlock()
		s.log.Info("gossip suspicion not confirmed: the peer's agent answers", "group", k.String(), "member", lost, "reporter", reporter)
		return &musterv1.ReportPeerLostResponse{Reason: "peer's agent answers"}, nil
	}
	if err := s.store.DeleteMember(ctx, k, m); err != nil {
		return nil, internal(err)
	}
	s.log.Warn("member lost: its agent is unreachable", "group", k.String(), "member", lost, "reported_by", reporter, "check", dialErr)
	return &musterv1.ReportPeerLostResponse{Confirmed: true, Reason: "peer's agent is unreachable"}, nil
}
