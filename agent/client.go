package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// This file is the agent as the coordinator's client: the connection, join
// and watch, the status reports, leave, and the gossip peers it learns of
// and reports lost.

// dial makes the client connection to the coordinator replicas; gRPC
// connects on the first call.
func dial(cfg Config) (*grpc.ClientConn, error) {
	opts, err := cfg.transportCredentials()
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(cfg.Address); ip != nil {
		// Dial the coordinator from the member's own address: where several
		// members share one network namespace (pods of a process node,
		// hosts on one machine), a connection from whichever address the
		// kernel picks dies with that address's pod.
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			d := net.Dialer{}
			if host, _, err := net.SplitHostPort(addr); err == nil {
				if t := net.ParseIP(host); t != nil && (t.To4() == nil) == (ip.To4() == nil) {
					d.LocalAddr = &net.TCPAddr{IP: ip}
				}
			}
			return d.DialContext(ctx, "tcp", addr)
		}))
	}
	target := cfg.Coordinators[0]
	if len(cfg.Coordinators) > 1 {
		// pick_first over every replica: when the current one fails, gRPC
		// moves to the next reachable address by itself.
		r := manual.NewBuilderWithScheme("muster")
		var addrs []resolver.Address
		for _, c := range cfg.Coordinators {
			addrs = append(addrs, resolver.Address{Addr: c})
		}
		r.InitialState(resolver.State{Addresses: addrs})
		opts = append(opts, grpc.WithResolvers(r))
		target = "muster:///coordinators"
	}
	conn, err := grpc.NewClient(target, append(opts, cfg.DialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("--coordinator %v: %w", cfg.Coordinators, err)
	}
	return conn, nil
}

// join joins generation gen (-1: fresh), retrying while the coordinator is
// unreachable, for at most JoinTimeout.
func (a *agent) join(ctx context.Context, gen int64) (*musterv1.JoinResponse, error) {
	req := &musterv1.JoinRequest{
		Group: a.ref, MemberId: a.cfg.MemberID, Address: a.cfg.Address, Ordinal: a.cfg.Ordinal,
		Size: int32(a.cfg.Size), Runtime: a.cfg.Runtime, MasterPort: int32(a.port), Generation: gen,
		RankOrder: a.cfg.RankOrder, TopologyDomain: a.cfg.TopologyDomain,
	}
	if a.gossip != nil {
		req.GossipPort = int32(a.gossip.Port())
	}
	deadline := time.Now().Add(a.cfg.JoinTimeout)
	backoff := 200 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := a.client.Join(cctx, req)
		cancel()
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil {
			return nil, &ExitError{Code: 1, Err: ctx.Err()}
		}
		full := groupFull(err)
		if !retryable(err) && !full {
			return nil, &ExitError{Code: 1, Err: errors.New(status.Convert(err).Message())}
		}
		left := time.Until(deadline)
		switch {
		case left <= 0 && full:
			return nil, &ExitError{Code: 1, Err: fmt.Errorf("no member left the full group within %s (--join-timeout): %s", a.cfg.JoinTimeout, status.Convert(err).Message())}
		case left <= 0:
			return nil, &ExitError{Code: 1, Err: fmt.Errorf("could not reach the coordinator at %v for %s (--join-timeout): %s", a.cfg.Coordinators, a.cfg.JoinTimeout, status.Convert(err).Message())}
		case full:
			// A pod that replaces a member (a Deployment's new pod for a
			// deleted one) can start before its predecessor has left.
			a.log.Info("group is full; waiting for a member to leave", "err", status.Convert(err).Message(), "retry_in", backoff, "giving_up_in", left.Round(time.Second))
		default:
			a.log.Warn("coordinator unreachable; retrying", "coordinator", fmt.Sprint(a.cfg.Coordinators), "err", status.Convert(err).Message(), "retry_in", backoff, "giving_up_in", left.Round(time.Second))
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, &ExitError{Code: 1, Err: ctx.Err()}
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// watchLoop keeps a Watch stream open, rejoining and reconnecting when it
// breaks, and hands events (or a fatal error) to the main loop.
func (a *agent) watchLoop(ctx context.Context, out chan<- event) {
	send := func(e event) bool {
		select {
		case out <- e:
			return true
		case <-ctx.Done():
			return false
		}
	}
	first := true
	for ctx.Err() == nil {
		if !first {
			// Rejoining is idempotent and brings back a membership whose
			// lease ran out while the coordinator was out of reach.
			if _, err := a.join(ctx, a.gen.Load()); err != nil {
				send(event{err: err})
				return
			}
		}
		first = false
		stream, err := a.client.Watch(ctx, &musterv1.WatchRequest{Group: a.ref, MemberId: a.cfg.MemberID, Generation: a.gen.Load()})
		for err == nil {
			var ev *musterv1.GroupEvent
			ev, err = stream.Recv()
			if err == nil && !send(event{ev: ev}) {
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
		switch status.Code(err) {
		case codes.InvalidArgument, codes.ResourceExhausted, codes.FailedPrecondition, codes.PermissionDenied, codes.Unauthenticated:
			send(event{err: &ExitError{Code: 1, Err: errors.New(status.Convert(err).Message())}})
			return
		}
		if err != nil && !errors.Is(err, io.EOF) {
			a.log.Warn("lost the coordinator stream; reconnecting", "err", status.Convert(err).Message())
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return
		}
	}
}

// event is what the watch loop hands the main loop.
type event struct {
	ev  *musterv1.GroupEvent
	err error // fatal
}

type pendingReport struct {
	req  *musterv1.ReportStatusRequest
	done chan struct{}
}

// report queues a status report; the reporter sends them in order.
func (a *agent) report(gen int64, state musterv1.RuntimeState, code int, reason string) {
	p := pendingReport{
		req: &musterv1.ReportStatusRequest{
			Group: a.ref, MemberId: a.cfg.MemberID, Generation: gen, State: state, ExitCode: int32(code), Reason: reason,
		},
		done: make(chan struct{}),
	}
	select {
	case a.reports <- p:
		if state == musterv1.RuntimeState_RUNTIME_STATE_EXITED {
			a.last = p.done
		}
	case <-a.quit:
	}
}

// reporter sends status reports in order, retrying each until the
// coordinator takes it or says it is stale.
func (a *agent) reporter(ctx context.Context) {
	for {
		var p pendingReport
		select {
		case p = <-a.reports:
		case <-a.quit:
			return
		}
		a.send(ctx, p.req)
		close(p.done)
	}
}

func (a *agent) send(ctx context.Context, req *musterv1.ReportStatusRequest) {
	backoff := 100 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := a.client.ReportStatus(cctx, req)
		cancel()
		switch {
		case err == nil:
			if resp.GetStale() {
				a.log.Debug("status report was for an older generation; dropped", "generation", req.GetGeneration())
			}
			return
		case ctx.Err() != nil || req.GetGeneration() < a.gen.Load():
			return
		case !retryable(err):
			a.log.Warn("status report refused", "state", req.GetState().String(), "err", status.Convert(err).Message())
			return
		}
		lvl := slog.LevelDebug
		if backoff >= time.Second {
			lvl = slog.LevelWarn // failing for a while: say so
		}
		a.log.Log(ctx, lvl, "status report failed; retrying", "state", req.GetState().String(), "err", status.Convert(err).Message(), "retry_in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// flushReports waits, briefly, until the last exit report was sent.
func (a *agent) flushReports() {
	if a.last == nil {
		return
	}
	select {
	case <-a.last:
	case <-time.After(5 * time.Second):
	}
}

func (a *agent) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := a.client.Leave(ctx, &musterv1.LeaveRequest{Group: a.ref, MemberId: a.cfg.MemberID}); err != nil {
		a.log.Warn("leave failed; the coordinator drops this member when its lease expires", "err", status.Convert(err).Message())
	}
}

// groupFull says whether the coordinator refused a join because the group
// had its size of members attached.
func groupFull(err error) bool {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == musterv1.ErrorDomain && info.GetReason() == musterv1.ReasonGroupFull {
			return true
		}
	}
	return false
}

func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.Canceled, codes.Unknown, codes.Internal:
		return true
	}
	return false
}

// joinPeers makes this member's gossip node meet the rest of the group of
// generation gen (their addresses come from the coordinator).
func (a *agent) joinPeers(ctx context.Context, gen int64, key []byte, seeds []string) {
	if a.gossip == nil {
		return
	}
	if len(key) == 0 {
		a.log.Warn("gossip: the coordinator handed out no gossip key; relying on leases", "generation", gen)
		return
	}
	if gen != a.gen.Load() {
		// A later generation's assignment came meanwhile: its key, not
		// this older one, is the one to gossip with.
		return
	}
	if err := a.gossip.UseKey(key); err != nil {
		a.log.Warn("gossip: relying on leases", "err", err)
		return
	}
	peers := seeds
	if len(peers) == 0 {
		// A coordinator that names no seeds (older than the agent): a
		// few live peers from the group's list.
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		g, err := a.client.GetGroup(cctx, &musterv1.GetGroupRequest{Group: a.ref})
		if err != nil {
			a.log.Warn("gossip: cannot list the group's members; relying on leases", "err", status.Convert(err).Message())
			return
		}
		for _, m := range g.GetMembers() {
			if m.GetId() != a.cfg.MemberID && m.GetLive() && m.GetGossipPort() > 0 && len(peers) < 3 {
				peers = append(peers, net.JoinHostPort(m.GetAddress(), strconv.Itoa(int(m.GetGossipPort()))))
			}
		}
	}
	// The seeds take the generation's key when their own assignment
	// arrives, which may be a moment after this member's: until then they
	// cannot read its join, so it is tried again for a while.
	jctx, cancel := context.WithTimeout(ctx, joinRetryFor)
	defer cancel()
	if err := a.gossip.JoinRetry(jctx, peers, func() bool { return gen == a.gen.Load() }); err != nil {
		if ctx.Err() == nil {
			a.log.Warn("gossip: join failed; relying on leases", "err", err)
		}
		return
	}
	a.log.Info("gossip: joined peers", "peers", len(peers), "generation", gen)
}

// joinRetryFor is how long a member keeps trying to join its group's
// gossip through the seeds it was given.
const joinRetryFor = 10 * time.Second

// maxLostReports is how many lost-peer reports one agent has in flight.
const maxLostReports = 4

// peerLost reports a peer that gossip declared dead; the coordinator
// confirms before it restarts anything.
func (a *agent) peerLost(ctx context.Context, peer string) {
	const reportTimeout, aliveQuiet = 5 * time.Second, 2 * time.Second
	now := time.Now()
	a.lostMu.Lock()
	if a.lostQuiet == nil {
		a.lostQuiet = map[string]time.Time{}
	}
	if now.Before(a.lostQuiet[peer]) {
		a.lostMu.Unlock()
		return
	}
	a.lostQuiet[peer] = now.Add(reportTimeout)
	a.lostMu.Unlock()
	quiet := func(d time.Duration) {
		a.lostMu.Lock()
		a.lostQuiet[peer] = time.Now().Add(d)
		a.lostMu.Unlock()
	}

	cctx, cancel := context.WithTimeout(ctx, reportTimeout)
	defer cancel()
	// A few reports at a time: when this member's own host is what is
	// slow, gossip may declare many peers dead at once, and the
	// coordinator confirms each anyway.
	select {
	case a.lostSem <- struct{}{}:
		defer func() { <-a.lostSem }()
	case <-cctx.Done():
		quiet(reportTimeout)
		return
	}
	resp, err := a.client.ReportPeerLost(cctx, &musterv1.ReportPeerLostRequest{Group: a.ref, MemberId: a.cfg.MemberID, LostMemberId: peer, Generation: a.gen.Load()})
	if err != nil {
		// Not again at once: a coordinator that did not answer in time is
		// busy, and the peer's lease still tells.
		quiet(reportTimeout)
		if ctx.Err() == nil {
			a.log.Warn("gossip: could not report a lost peer; its lease will tell", "peer", peer, "err", status.Convert(err).Message())
		}
		return
	}
	if resp.GetConfirmed() {
		quiet(0)
	} else {
		quiet(aliveQuiet) // the coordinator found it alive: gossip was wrong
	}
	a.log.Info("gossip: peer lost", "peer", peer, "confirmed", resp.GetConfirmed(), "reason", resp.GetReason())
}
