package agent_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/muster-dev/muster/agent"
	"github.com/muster-dev/muster/coordinator/testcoord"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// TestReplacementWaitsForItsPredecessor: a member that joins a full group
// (a Deployment's new pod, started while the pod it replaces still
// terminates) waits for a member to leave instead of exiting, then takes
// its place.
func TestReplacementWaitsForItsPredecessor(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	dir := t.TempDir()
	// Each runtime marks its start with a file named for its member and
	// generation, then serves until stopped.
	cmd := []string{"sh", "-c", `touch "$0/$MUSTER_MEMBER_ID.$MUSTER_GENERATION"; exec sleep 120`, dir}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	type run struct {
		cancel context.CancelFunc
		done   chan error
	}
	start := func(cfg agent.Config) run {
		rctx, rcancel := context.WithCancel(ctx)
		r := run{cancel: rcancel, done: make(chan error, 1)}
		go func() { r.done <- agent.Run(rctx, cfg) }()
		return r
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			select {
			case <-ctx.Done():
				t.Fatalf("%s: not within the test's deadline", what)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	exists := func(name string) func() bool {
		return func() bool { _, err := os.Stat(filepath.Join(dir, name)); return err == nil }
	}

	a0 := start(agentConfig(t, co.Addr(), "full", 2, 0, cmd...))
	a1 := start(agentConfig(t, co.Addr(), "full", 2, 1, cmd...))
	wait("both members running", func() bool { return exists("full-0.0")() && exists("full-1.0")() })

	// A third member: it must say it waits, and keep waiting.
	cfg := agentConfig(t, co.Addr(), "full", 2, 2, cmd...)
	cfg.Ordinal = nil // a Deployment's pod: no index
	logs := &syncBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	a2 := start(cfg)
	wait("the newcomer waits for a place", func() bool {
		select {
		case err := <-a2.done:
			t.Fatalf("the newcomer exited while the group was full: %v\n%s", err, logs)
		default:
		}
		return strings.Contains(logs.String(), "group is full; waiting for a member to leave")
	})

	// Member 1's pod goes: the newcomer takes its rank in a restart.
	a1.cancel()
	<-a1.done
	wait("the newcomer runs in the group's next generation", exists("full-2.1"))
	wait("member 0 restarted with it", exists("full-0.1"))
	a0.cancel()
	a2.cancel()
	<-a0.done
	<-a2.done
}

// TestMissingCommandFailsTheGroupAtOnce: a runtime whose executable does
// not exist (exit 127) fails the group with that reason on the first try;
// restarting would run the same missing command again.
func TestMissingCommandFailsTheGroupAtOnce(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	var cfgs []agent.Config
	for i := range 2 {
		cfgs = append(cfgs, agentConfig(t, co.Addr(), "missing", 2, i, "/nonexistent/runtime", "--serve"))
	}
	for i, err := range runAll(t, cfgs) {
		if err == nil || !strings.Contains(err.Error(), "not found") || !strings.Contains(err.Error(), "not restarting") {
			t.Errorf("agent %d: %v; want the group failed because the command was not found", i, err)
		}
	}
	g, err := testcoord.Client(t, co.Addr()).GetGroup(t.Context(), &musterv1.GetGroupRequest{Group: &musterv1.GroupRef{Namespace: "test", Name: "missing"}})
	if err != nil {
		t.Fatal(err)
	}
	if g.GetGeneration() != 0 || g.GetPhase() != musterv1.Phase_PHASE_FAILED {
		t.Errorf("group in phase %s, generation %d; want Failed in generation 0: a command that cannot start is not restarted", g.GetPhase(), g.GetGeneration())
	}
}
