package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/muster-dev/muster/agent/gossip"
	"github.com/muster-dev/muster/agent/process"
	"github.com/muster-dev/muster/agent/proxy"
	"github.com/muster-dev/muster/podapi/names"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// run joins the group, then launches each generation's runtime and serves
// the group's endpoint until the group completes or fails, a signal stops
// the agent, or ctx ends.
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

	r := &runner{agent: a, ready: make(chan int64, 1), procGen: -1, launchedGen: -1, lastJoined: -1}
	defer r.drainEndpoint()
	if err := r.serveEndpoint(); err != nil {
		return err
	}
	events := make(chan event, 16)
	go a.watchLoop(ctx, events)
	return r.loop(ctx, events, sigs)
}

// runner is the run loop's state between events: the runtime this member
// launched, the group's endpoint and where it points, and the progress last
// logged. Only the loop's goroutine touches it; each event is one method.
type runner struct {
	*agent

	endpoint *proxy.Proxy  // nil when this member serves no endpoint
	srv      *proxy.Server // the endpoint's server; nil once drained
	target   proxy.Target  // where the endpoint sends requests

	proc        *process.Process // the runtime; nil when none runs
	procDone    <-chan struct{}  // proc's Done; nil when none runs
	procGen     int64            // the generation proc was launched for
	launchedGen int64            // the latest generation whose assignment was taken

	// ready hears which generation's runtime became ready; readyTimer
	// fires when it took longer than --ready-timeout (a stuck member).
	ready      chan int64
	readyTimer <-chan time.Time

	lastJoined int32 // the joined count last logged, and when
	lastLog    time.Time
}

// loop hands every event to the runner's method for it until one ends the
// run, and returns the run's result.
func (r *runner) loop(ctx context.Context, events <-chan event, sigs chan os.Signal) error {
	for {
		select {
		case e := <-events:
			if done, err := r.groupEvent(ctx, e); done {
				return err
			}
		case gen := <-r.ready:
			r.runtimeReady(gen)
		case <-r.readyTimer:
			r.readyTimedOut()
		case <-r.procDone:
			r.runtimeExited()
		case sig := <-sigs:
			return r.signalled(sig.(syscall.Signal), sigs)
		case <-ctx.Done():
			r.stopRuntime()
			return &ExitError{Code: 1, Err: ctx.Err()}
		}
	}
}

// groupEvent handles what the watch loop passed on from the coordinator;
// done says that it ended the run, with err as the run's result.
func (r *runner) groupEvent(ctx context.Context, e event) (done bool, err error) {
	if e.err != nil {
		r.stopRuntime()
		return true, e.err
	}
	switch ev := e.ev.Event.(type) {
	case *musterv1.GroupEvent_Progress:
		r.progress(ev.Progress)
	case *musterv1.GroupEvent_Assignment:
		r.assigned(ctx, ev.Assignment)
	case *musterv1.GroupEvent_Readiness:
		r.groupReadiness(ev.Readiness)
	case *musterv1.GroupEvent_Restart:
		if err := r.restart(ctx, ev.Restart); err != nil {
			return true, err
		}
	case *musterv1.GroupEvent_Completed:
		r.completed(ev.Completed)
		return true, nil
	case *musterv1.GroupEvent_Failed:
		return true, r.failed(ev.Failed)
	}
	return false, nil
}

// progress logs how many members have joined: when the count changes, and
// every 10 seconds while it does not.
func (r *runner) progress(p *musterv1.Progress) {
	if p.GetJoined() == r.lastJoined && time.Since(r.lastLog) <= 10*time.Second {
		return
	}
	r.lastJoined, r.lastLog = p.GetJoined(), time.Now()
	msg := fmt.Sprintf("group %s: %d/%d joined", r.cfg.Group, p.GetJoined(), p.GetSize())
	if w := p.GetWaitingFor(); len(w) > 0 {
		msg += ", waiting for " + strings.Join(w, ", ")
	}
	r.log.Info(msg, "generation", p.GetGeneration())
}

// assigned takes the barrier's assignment for the generation this member
// joined, once: it points the endpoint at the runtime that serves it,
// joins the generation's gossip and launches the runtime.
func (r *runner) assigned(ctx context.Context, as *musterv1.Assignment) {
	if as.GetGeneration() != r.gen.Load() || r.launchedGen >= as.GetGeneration() {
		return
	}
	r.launchedGen = as.GetGeneration()
	if err := names.ValidateAddress(as.GetLeaderAddress()); err != nil {
		// Checked by the coordinator already; checked again before
		// it reaches the endpoint's upstream, argv or env.
		r.log.Error("assignment refused", "err", err)
		r.report(as.GetGeneration(), musterv1.RuntimeState_RUNTIME_STATE_EXITED, 2, "leader "+err.Error())
		return
	}
	r.target = proxy.Target{Generation: as.GetGeneration(), Rank: int(as.GetRank())}
	if as.GetRank() == 0 {
		r.target.Upstream = net.JoinHostPort(r.cfg.Address, strconv.Itoa(r.cfg.ReadyPort))
	} else {
		r.target.Upstream = net.JoinHostPort(as.GetLeaderAddress(), strconv.Itoa(r.cfg.EndpointPort))
	}
	r.setEndpoint()
	go r.joinPeers(ctx, as.GetGeneration(), as.GetGossipKey(), as.GetGossipSeeds())
	var err error
	r.proc, err = r.launch(ctx, as)
	r.procGen = as.GetGeneration()
	if err != nil {
		r.log.Error("runtime failed to start", "err", err)
		r.report(r.procGen, musterv1.RuntimeState_RUNTIME_STATE_EXITED, 127, err.Error())
		return
	}
	r.procDone = r.proc.Done()
	r.report(r.procGen, musterv1.RuntimeState_RUNTIME_STATE_LAUNCHING, 0, "")
	go r.watchReady(ctx, r.proc, as, r.procGen, r.ready)
	if r.cfg.ReadyTimeout > 0 {
		r.readyTimer = time.After(r.cfg.ReadyTimeout)
	}
}

// groupReadiness opens the endpoint when every rank of this member's
// generation is ready, and closes it when one is not.
func (r *runner) groupReadiness(rd *musterv1.Readiness) {
	if rd.GetGeneration() != r.target.Generation || r.launchedGen != rd.GetGeneration() {
		return
	}
	r.target.Ready = rd.GetReady()
	r.setEndpoint()
	if rd.GetReady() {
		r.log.Info("group ready: every rank's runtime is ready", "generation", rd.GetGeneration())
	}
}

// restart stops this member's runtime and joins the group's next
// generation; its error ends the run.
func (r *runner) restart(ctx context.Context, rs *musterv1.Restart) error {
	if rs.GetGeneration() <= r.gen.Load() {
		return nil
	}
	r.target.Ready = false
	r.setEndpoint()
	r.log.Warn("group restarting", "generation", rs.GetGeneration(), "reason", rs.GetReason())
	r.stopRuntime()
	resp, err := r.join(ctx, rs.GetGeneration())
	if err != nil {
		return err
	}
	r.gen.Store(resp.GetGeneration())
	r.lastJoined = -1
	r.log.Info("rejoined", "generation", resp.GetGeneration(), "joined", resp.GetJoined(), "size", resp.GetSize())
	return nil
}

// completed ends the run of a group whose every rank exited 0.
func (r *runner) completed(c *musterv1.Completed) {
	r.stopRuntime()
	r.log.Info("group completed: every rank exited 0", "generation", c.GetGeneration())
	r.leave()
}

// failed ends the run of a group that will not restart, with the reason.
func (r *runner) failed(f *musterv1.Failed) error {
	r.stopRuntime()
	r.leave()
	return &ExitError{Code: 1, Err: fmt.Errorf("group %s failed in generation %d: %s (member %s); not restarting", r.cfg.Group, f.GetGeneration(), f.GetReason(), f.GetMemberId())}
}

// runtimeReady reports that the runtime of generation gen became ready, if
// it is the one running.
func (r *runner) runtimeReady(gen int64) {
	if gen != r.procGen || r.proc == nil {
		return
	}
	r.readyTimer = nil
	r.log.Info("runtime ready", "generation", gen)
	r.report(gen, musterv1.RuntimeState_RUNTIME_STATE_READY, 0, "")
}

// readyTimedOut stops a runtime that is alive but was not ready within
// --ready-timeout and reports it failed.
func (r *runner) readyTimedOut() {
	r.readyTimer = nil
	if r.proc == nil {
		return
	}
	reason := fmt.Sprintf("runtime not ready within %s (--ready-timeout); stopped as stuck", r.cfg.ReadyTimeout)
	r.log.Error(reason, "generation", r.procGen)
	res := r.proc.Stop(r.cfg.StopGrace)
	r.proc, r.procDone = nil, nil
	code := res.Code
	if code == 0 {
		code = 1
	}
	r.report(r.procGen, musterv1.RuntimeState_RUNTIME_STATE_EXITED, code, reason)
}

// runtimeExited reports how the runtime ended.
func (r *runner) runtimeExited() {
	r.readyTimer = nil
	res := r.proc.Result()
	r.proc, r.procDone = nil, nil
	if res.Code == 0 {
		r.log.Info("runtime exited 0; waiting for the other ranks", "generation", r.procGen)
	} else {
		r.log.Error("runtime failed; the group will restart", "generation", r.procGen, "result", res.Reason())
	}
	r.report(r.procGen, musterv1.RuntimeState_RUNTIME_STATE_EXITED, res.Code, res.Reason())
}

// signalled ends the run on signal s: the endpoint drains, the runtime gets
// s, and the agent exits with the runtime's code (128+s when none runs).
func (r *runner) signalled(s syscall.Signal, sigs <-chan os.Signal) error {
	code := 128 + int(s)
	// Requests in flight finish before the runtime is told to stop.
	r.drainEndpoint()
	if r.proc != nil {
		r.log.Info("forwarding signal to runtime", "signal", s.String())
		r.proc.Signal(s)
		// A second signal, or the grace period, escalates to SIGKILL.
		select {
		case <-r.proc.Done():
		case <-sigs:
			r.proc.Signal(syscall.SIGKILL)
		case <-time.After(r.cfg.StopGrace):
			r.proc.Signal(syscall.SIGKILL)
		}
		res := r.proc.Result()
		code = res.Code
		reported, why := res.Code, res.Reason()
		if reported == 0 {
			// A runtime that stops cleanly when told to (a pod
			// deleted, a node drained) was stopped, not done: the
			// group restarts rather than counting this rank as
			// completed.
			reported, why = 128+int(s), "exited 0 when told to stop"
		}
		r.report(r.procGen, musterv1.RuntimeState_RUNTIME_STATE_EXITED, reported, "agent received "+s.String()+"; runtime "+why)
	} else {
		r.log.Info("stopping on signal", "signal", s.String())
	}
	r.flushReports()
	r.leave()
	return &ExitError{Code: code, Err: fmt.Errorf("stopped by %s", s)}
}

// stopRuntime stops the runtime, if one runs, within the stop grace period.
func (r *runner) stopRuntime() {
	if r.proc == nil {
		return
	}
	res := r.proc.Stop(r.cfg.StopGrace)
	r.log.Info("runtime stopped", "generation", r.procGen, "result", res.Reason())
	r.proc, r.procDone = nil, nil
}

// serveEndpoint starts the group's endpoint on this member, when it has
// an endpoint port and a runtime port to send requests to.
func (r *runner) serveEndpoint() error {
	if r.cfg.EndpointPort > 0 && r.cfg.ReadyPort == 0 {
		r.log.Info("no runtime serving port (--port, muster.dev/port): the group serves no endpoint")
	}
	if r.cfg.EndpointPort <= 0 || r.cfg.ReadyPort <= 0 {
		return nil
	}
	r.endpoint = proxy.New(r.log)
	srv, err := proxy.ListenWith(net.JoinHostPort(r.cfg.Address, strconv.Itoa(r.cfg.EndpointPort)), r.endpoint,
		proxy.Options{IdleTimeout: r.cfg.EndpointIdleTimeout, MaxBodyBytes: r.cfg.MaxBodyBytes, BodyTimeout: r.cfg.EndpointBodyTimeout})
	if err != nil {
		return &ExitError{Code: 1, Err: err}
	}
	r.srv = srv
	r.log.Info("serving the group's endpoint", "addr", srv.Addr())
	return nil
}

// setEndpoint points the endpoint, if this member serves one, at r.target.
func (r *runner) setEndpoint() {
	if r.endpoint != nil {
		r.endpoint.Set(r.target)
	}
}

// drainEndpoint stops the endpoint, letting requests in flight finish (up
// to the stop grace period) while the runtime still runs.
func (r *runner) drainEndpoint() {
	if r.srv == nil {
		return
	}
	dctx, cancel := context.WithTimeout(context.Background(), r.cfg.StopGrace)
	defer cancel()
	if err := r.srv.Shutdown(dctx); err != nil {
		r.log.Warn("endpoint drain cut short", "err", err)
	}
	r.srv = nil
}
