package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/agent/gossip"
	"github.com/muster-dev/muster/agent/preset"
	"github.com/muster-dev/muster/agent/process"
	"github.com/muster-dev/muster/agent/proxy"
	"github.com/muster-dev/muster/podapi"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// ExitError carries the exit code the agent process should end with.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Run runs the agent until the group completes (nil), fails, or a signal
// stops it. The error says why and, as an *ExitError, with which code the
// process should exit.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return &ExitError{Code: 2, Err: err}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	cfg.Logger = log.With("group", cfg.Namespace+"/"+cfg.Group, "member", cfg.MemberID)
	// A group shape the runtime cannot run is refused here, before joining,
	// rather than by every launch of every generation until the restart
	// budget runs out.
	// A runtime that writes files (ray, deepspeed) gets a directory private
	// to this agent, made once and removed at the end.
	remove, err := cfg.makeDir()
	if err != nil {
		return &ExitError{Code: 1, Err: err}
	}
	defer remove()
	note, err := preset.Check(cfg.Runtime, cfg.groupAssignment(), cfg.Command)
	if err != nil {
		return &ExitError{Code: 2, Err: err}
	}
	if note != "" {
		cfg.Logger.Info(note, "runtime", cfg.Runtime)
	}
	warnServiceLinks(cfg.Logger, cfg.Runtime, os.Environ())
	a, err := newAgent(cfg)
	if err != nil {
		return &ExitError{Code: 1, Err: err}
	}
	defer a.conn.Close()
	return a.run(ctx)
}

type agent struct {
	cfg    Config
	log    *slog.Logger
	conn   *grpc.ClientConn
	client musterv1.RendezvousClient
	ref    *musterv1.GroupRef
	port   int

	gen atomic.Int64 // generation this member has joined; -1 before the first join

	// lostMu guards lostQuiet: per peer, no report before that time (one
	// is in flight, or the coordinator just found the peer alive), so a
	// peer that gossip keeps suspecting on a loaded machine is reported
	// once, not once per suspicion.
	lostMu    sync.Mutex
	lostQuiet map[string]time.Time
	lostSem   chan struct{} // bounds the lost-peer reports in flight

	gossip *gossip.Node

	reports chan pendingReport
	quit    chan struct{} // closed when run returns; stops the reporter
	last    chan struct{} // done channel of the latest queued report
}

// maxLostReports is how many lost-peer reports one agent has in flight.
const maxLostReports = 4

type pendingReport struct {
	req  *musterv1.ReportStatusRequest
	done chan struct{}
}

// newAgent makes the agent for cfg, which Run has validated and given a
// logger.
func newAgent(cfg Config) (*agent, error) {
	log := cfg.Logger
	p, err := preset.Get(cfg.Runtime)
	if err != nil {
		return nil, err
	}
	span := max(p.PortSpan, 1)
	port := cfg.MasterPort
	if port == 0 {
		// Every member picks a port on its own address; the leader's
		// becomes MASTER_PORT. Picking it here also proves the address is
		// this host's.
		if port, err = freePortBlock(cfg.Address, span, listenTCP); err != nil {
			return nil, fmt.Errorf("--address %s: cannot listen there (is it this host's address?): %w", cfg.Address, err)
		}
	} else if span > 1 {
		if busy := busyInBlock(cfg.Address, port, span); busy != 0 {
			log.Warn(fmt.Sprintf("--master-port %d: runtime %s uses ports %d-%d on the leader, and %d is taken now", port, cfg.Runtime, port, port+span-1, busy))
		}
	}
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
	a := &agent{
		cfg: cfg, log: log, conn: conn, client: musterv1.NewRendezvousClient(conn),
		ref:     &musterv1.GroupRef{Namespace: cfg.Namespace, Name: cfg.Group},
		port:    port,
		reports: make(chan pendingReport, 64),
		quit:    make(chan struct{}),
		lostSem: make(chan struct{}, maxLostReports),
	}
	a.gen.Store(-1)
	return a, nil
}

// event is what the watch loop hands the main loop.
type event struct {
	ev  *musterv1.GroupEvent
	err error // fatal
}

func (a *agent) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	if !a.cfg.NoGossip {
		// Peers watch each other directly: a member whose agent vanishes is
		// noticed in well under a second instead of when its lease runs out.
		node, err := gossip.Start(gossip.Config{Name: a.cfg.MemberID, BindAddr: a.cfg.Address, GroupSize: a.cfg.Size, OnLost: func(peer string) { go a.peerLost(ctx, peer) }})
		if err != nil {
			return &ExitError{Code: 1, Err: err}
		}
		a.gossip = node
		defer node.Close()
	}
	a.log.Info("joining group", "coordinator", fmt.Sprint(a.cfg.Coordinators), "size", a.cfg.Size, "address", a.cfg.Address, "runtime", a.cfg.Runtime)
	resp, err := a.join(ctx, -1)
	if err != nil {
		return err
	}
	a.gen.Store(resp.GetGeneration())
	a.log.Info("joined", "generation", resp.GetGeneration(), "joined", resp.GetJoined(), "size", resp.GetSize())

	var reporterDone sync.WaitGroup
	reporterDone.Add(1)
	go func() { defer reporterDone.Done(); a.reporter(ctx) }()
	defer func() {
		close(a.quit)
		cancel()
		reporterDone.Wait()
	}()

	var (
		endpoint *proxy.Proxy
		srv      *proxy.Server
	)
	// drain stops the endpoint, letting requests in flight finish (up to
	// the stop grace period) while the runtime still runs.
	drain := func() {
		if srv == nil {
			return
		}
		dctx, cancel := context.WithTimeout(context.Background(), a.cfg.StopGrace)
		defer cancel()
		if err := srv.Shutdown(dctx); err != nil {
			a.log.Warn("endpoint drain cut short", "err", err)
		}
		srv = nil
	}
	defer drain()
	if a.cfg.EndpointPort > 0 && a.cfg.ReadyPort == 0 {
		a.log.Info("no runtime serving port (--port, muster.dev/port): the group serves no endpoint")
	}
	if a.cfg.EndpointPort > 0 && a.cfg.ReadyPort > 0 {
		endpoint = proxy.New(a.log)
		var err error
		if srv, err = proxy.ListenWith(net.JoinHostPort(a.cfg.Address, strconv.Itoa(a.cfg.EndpointPort)), endpoint,
			proxy.Options{IdleTimeout: a.cfg.EndpointIdleTimeout, MaxBodyBytes: a.cfg.MaxBodyBytes, BodyTimeout: a.cfg.EndpointBodyTimeout}); err != nil {
			return &ExitError{Code: 1, Err: err}
		}
		a.log.Info("serving the group's endpoint", "addr", srv.Addr())
	}
	setEndpoint := func(t proxy.Target) {
		if endpoint != nil {
			endpoint.Set(t)
		}
	}
	var target proxy.Target

	events := make(chan event, 16)
	go a.watchLoop(ctx, events)

	// readyCh hears which generation's runtime became ready; readyTimer
	// fires when it took longer than --ready-timeout (a stuck member).
	readyCh := make(chan int64, 1)
	var readyTimer <-chan time.Time
	var (
		proc        *process.Process
		procDone    <-chan struct{}
		procGen     int64 = -1
		launchedGen int64 = -1
		lastLog     time.Time
		lastJoined  int32 = -1
	)
	stop := func() {
		if proc != nil {
			r := proc.Stop(a.cfg.StopGrace)
			a.log.Info("runtime stopped", "generation", procGen, "result", r.Reason())
			proc, procDone = nil, nil
		}
	}
	for {
		select {
		case e := <-events:
			if e.err != nil {
				stop()
				return e.err
			}
			switch ev := e.ev.Event.(type) {
			case *musterv1.GroupEvent_Progress:
				p := ev.Progress
				if p.GetJoined() != lastJoined || time.Since(lastLog) > 10*time.Second {
					lastJoined, lastLog = p.GetJoined(), time.Now()
					msg := fmt.Sprintf("group %s: %d/%d joined", a.cfg.Group, p.GetJoined(), p.GetSize())
					if w := p.GetWaitingFor(); len(w) > 0 {
						msg += ", waiting for " + strings.Join(w, ", ")
					}
					a.log.Info(msg, "generation", p.GetGeneration())
				}
			case *musterv1.GroupEvent_Assignment:
				as := ev.Assignment
				if as.GetGeneration() != a.gen.Load() || launchedGen >= as.GetGeneration() {
					continue
				}
				launchedGen = as.GetGeneration()
				if err := podapi.ValidateAddress(as.GetLeaderAddress()); err != nil {
					// Checked by the coordinator already; checked again before
					// it reaches the endpoint's upstream, argv or env.
					a.log.Error("assignment refused", "err", err)
					a.report(as.GetGeneration(), musterv1.RuntimeState_RUNTIME_STATE_EXITED, 2, "leader "+err.Error())
					continue
				}
				target = proxy.Target{Generation: as.GetGeneration(), Rank: int(as.GetRank())}
				if as.GetRank() == 0 {
					target.Upstream = net.JoinHostPort(a.cfg.Address, strconv.Itoa(a.cfg.ReadyPort))
				} else {
					target.Upstream = net.JoinHostPort(as.GetLeaderAddress(), strconv.Itoa(a.cfg.EndpointPort))
				}
				setEndpoint(target)
				go a.joinPeers(ctx, as.GetGeneration(), as.GetGossipKey(), as.GetGossipSeeds())
				proc, err = a.launch(ctx, as)
				procGen = as.GetGeneration()
				if err != nil {
					a.log.Error("runtime failed to start", "err", err)
					a.report(procGen, musterv1.RuntimeState_RUNTIME_STATE_EXITED, 127, err.Error())
					continue
				}
				procDone = proc.Done()
				a.report(procGen, musterv1.RuntimeState_RUNTIME_STATE_LAUNCHING, 0, "")
				go a.watchReady(ctx, proc, as, procGen, readyCh)
				if a.cfg.ReadyTimeout > 0 {
					readyTimer = time.After(a.cfg.ReadyTimeout)
				}
			case *musterv1.GroupEvent_Readiness:
				r := ev.Readiness
				if r.GetGeneration() == target.Generation && launchedGen == r.GetGeneration() {
					target.Ready = r.GetReady()
					setEndpoint(target)
					if r.GetReady() {
						a.log.Info("group ready: every rank's runtime is ready", "generation", r.GetGeneration())
					}
				}
			case *musterv1.GroupEvent_Restart:
				r := ev.Restart
				if r.GetGeneration() <= a.gen.Load() {
					continue
				}
				target.Ready = false
				setEndpoint(target)
				a.log.Warn("group restarting", "generation", r.GetGeneration(), "reason", r.GetReason())
				stop()
				resp, err := a.join(ctx, r.GetGeneration())
				if err != nil {
					return err
				}
				a.gen.Store(resp.GetGeneration())
				lastJoined = -1
				a.log.Info("rejoined", "generation", resp.GetGeneration(), "joined", resp.GetJoined(), "size", resp.GetSize())
			case *musterv1.GroupEvent_Completed:
				stop()
				a.log.Info("group completed: every rank exited 0", "generation", ev.Completed.GetGeneration())
				a.leave()
				return nil
			case *musterv1.GroupEvent_Failed:
				f := ev.Failed
				stop()
				a.leave()
				return &ExitError{Code: 1, Err: fmt.Errorf("group %s failed in generation %d: %s (member %s); not restarting", a.cfg.Group, f.GetGeneration(), f.GetReason(), f.GetMemberId())}
			}
		case gen := <-readyCh:
			if gen == procGen && proc != nil {
				readyTimer = nil
				a.log.Info("runtime ready", "generation", gen)
				a.report(gen, musterv1.RuntimeState_RUNTIME_STATE_READY, 0, "")
			}
		case <-readyTimer:
			readyTimer = nil
			if proc != nil {
				reason := fmt.Sprintf("runtime not ready within %s (--ready-timeout); stopped as stuck", a.cfg.ReadyTimeout)
				a.log.Error(reason, "generation", procGen)
				r := proc.Stop(a.cfg.StopGrace)
				proc, procDone = nil, nil
				code := r.Code
				if code == 0 {
					code = 1
				}
				a.report(procGen, musterv1.RuntimeState_RUNTIME_STATE_EXITED, code, reason)
			}
		case <-procDone:
			readyTimer = nil
			r := proc.Result()
			proc, procDone = nil, nil
			if r.Code == 0 {
				a.log.Info("runtime exited 0; waiting for the other ranks", "generation", procGen)
			} else {
				a.log.Error("runtime failed; the group will restart", "generation", procGen, "result", r.Reason())
			}
			a.report(procGen, musterv1.RuntimeState_RUNTIME_STATE_EXITED, r.Code, r.Reason())
		case sig := <-sigs:
			s := sig.(syscall.Signal)
			code := 128 + int(s)
			// Requests in flight finish before the runtime is told to stop.
			drain()
			if proc != nil {
				a.log.Info("forwarding signal to runtime", "signal", s.String())
				proc.Signal(s)
				// A second signal, or the grace period, escalates to SIGKILL.
				select {
				case <-proc.Done():
				case <-sigs:
					proc.Signal(syscall.SIGKILL)
				case <-time.After(a.cfg.StopGrace):
					proc.Signal(syscall.SIGKILL)
				}
				r := proc.Result()
				code = r.Code
				reported, why := r.Code, r.Reason()
				if reported == 0 {
					// A runtime that stops cleanly when told to (a pod
					// deleted, a node drained) was stopped, not done: the
					// group restarts rather than counting this rank as
					// completed.
					reported, why = 128+int(s), "exited 0 when told to stop"
				}
				a.report(procGen, musterv1.RuntimeState_RUNTIME_STATE_EXITED, reported, "agent received "+s.String()+"; runtime "+why)
			} else {
				a.log.Info("stopping on signal", "signal", s.String())
			}
			a.flushReports()
			a.leave()
			return &ExitError{Code: code, Err: fmt.Errorf("stopped by %s", s)}
		case <-ctx.Done():
			stop()
			return &ExitError{Code: 1, Err: ctx.Err()}
		}
	}
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

func (a *agent) launch(ctx context.Context, as *musterv1.Assignment) (*process.Process, error) {
	asg := a.cfg.groupAssignment()
	asg.Rank, asg.WorldSize, asg.Generation = int(as.GetRank()), int(as.GetWorldSize()), as.GetGeneration()
	asg.LeaderAddr, asg.Port = as.GetLeaderAddress(), int(as.GetMasterPort())
	if p, _ := preset.Get(a.cfg.Runtime); p.NeedsPeers {
		peers, err := a.peers(ctx, asg.Generation, asg.WorldSize)
		if err != nil {
			return nil, err
		}
		asg.Peers = peers
	}
	cmd, err := preset.Build(a.cfg.Runtime, asg, a.cfg.Command)
	if err != nil {
		return nil, err
	}
	if err := writeFiles(asg.Dir, cmd.Files); err != nil {
		return nil, err
	}
	a.log.Info("barrier released; launching runtime", "generation", asg.Generation, "rank", asg.Rank, "world_size", asg.WorldSize,
		"master_addr", asg.LeaderAddr, "master_port", asg.Port, "command", fmt.Sprint(cmd.Argv))
	return process.Start(cmd.Argv, cmd.Env, a.cfg.Stdout, a.cfg.Stderr)
}

// watchReady reports the runtime ready: on the leader with --port, once it
// accepts connections there; otherwise once it runs.
func (a *agent) watchReady(ctx context.Context, p *process.Process, as *musterv1.Assignment, gen int64, ready chan<- int64) {
	if a.cfg.ReadyPort > 0 && as.GetRank() == 0 {
		addr := net.JoinHostPort(a.cfg.Address, strconv.Itoa(a.cfg.ReadyPort))
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-p.Done():
				return
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	select {
	case <-p.Done():
		return
	default:
	}
	// The main loop reports it, so that a ready report can never overtake
	// the exit report of a runtime that ended meanwhile.
	select {
	case ready <- gen:
	case <-p.Done():
	case <-ctx.Done():
	}
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
