package agent

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/muster-dev/muster/agent/gossip"
	"github.com/muster-dev/muster/agent/preset"
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
	p, err := cfg.validate()
	if err != nil {
		return &ExitError{Code: 2, Err: err}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	cfg.Logger = log.With("group", cfg.Namespace+"/"+cfg.Group, "member", cfg.MemberID)
	// A runtime that writes files (ray, deepspeed) gets a directory private
	// to this agent, made once and removed at the end.
	remove, err := cfg.makeDir(p)
	if err != nil {
		return &ExitError{Code: 1, Err: err}
	}
	defer remove()
	// A group shape the runtime cannot run is refused here, before joining,
	// rather than by every launch of every generation until the restart
	// budget runs out.
	note, err := preset.Check(cfg.Runtime, cfg.groupAssignment(p), cfg.Command)
	if err != nil {
		return &ExitError{Code: 2, Err: err}
	}
	if note != "" {
		cfg.Logger.Info(note, "runtime", cfg.Runtime)
	}
	warnServiceLinks(cfg.Logger, cfg.Runtime, os.Environ())
	a, err := newAgent(cfg, p)
	if err != nil {
		return &ExitError{Code: 1, Err: err}
	}
	defer a.conn.Close()
	return a.run(ctx)
}

type agent struct {
	cfg    Config
	preset preset.Preset // cfg.Runtime's, looked up once by Run
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

// newAgent makes the agent for cfg, which Run has validated and given a
// logger, and p, the preset of cfg.Runtime.
func newAgent(cfg Config, p preset.Preset) (*agent, error) {
	port, err := masterPort(cfg, p.PortSpan)
	if err != nil {
		return nil, err
	}
	conn, err := dial(cfg)
	if err != nil {
		return nil, err
	}
	a := &agent{
		cfg: cfg, preset: p, log: cfg.Logger, conn: conn, client: musterv1.NewRendezvousClient(conn),
		ref:     &musterv1.GroupRef{Namespace: cfg.Namespace, Name: cfg.Group},
		port:    port,
		reports: make(chan pendingReport, 64),
		quit:    make(chan struct{}),
		lostSem: make(chan struct{}, maxLostReports),
	}
	a.gen.Store(-1)
	return a, nil
}
