package reaper

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/muster-dev/muster/coordinator/embedetcd"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/coordinator/store"
	"github.com/muster-dev/muster/podapi"
)

// newStore starts an embedded etcd and returns a store on it and a context
// that bounds the test.
func newStore(t *testing.T) (*store.Store, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	e, err := embedetcd.Start(ctx, embedetcd.DefaultConfig(t.TempDir()))
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.ClientURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("connect to %s: %v", e.ClientURL, err)
	}
	t.Cleanup(func() { cli.Close() })
	return store.New(cli, ""), ctx
}

func testLog() *slog.Logger {
	if os.Getenv("MUSTER_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// create creates group k in phase with members ids and returns the state
// revision.
func create(t *testing.T, ctx context.Context, s *store.Store, k podapi.Key, phase rendezvous.Phase, ids ...string) int64 {
	t.Helper()
	st := rendezvous.NewState(2, "env", 3)
	st.Phase = phase
	_, rev, err := s.CreateState(ctx, k, st)
	if err != nil {
		t.Fatalf("create %s: %v", k, err)
	}
	for _, id := range ids {
		lease, err := s.GrantLease(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}
		if ok, _, err := s.PutMember(ctx, k, rendezvous.Member{ID: id, Address: "10.0.0.1"}, lease, -1); err != nil || !ok {
			t.Fatalf("put member %s of %s: ok=%v err=%v", id, k, ok, err)
		}
	}
	return rev
}

func exists(t *testing.T, ctx context.Context, s *store.Store, k podapi.Key) bool {
	t.Helper()
	v, err := s.Load(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	return v.State != nil
}

func TestSweepDeletesFinishedGroupsAfterTTL(t *testing.T) {
	s, ctx := newStore(t)
	const ttl = time.Hour
	r := &reaper{store: s, ttl: ttl, log: testLog(), seen: map[podapi.Key]seen{}}
	completed := podapi.Key{Namespace: "ns", Name: "completed"}
	failed := podapi.Key{Namespace: "ns", Name: "failed"}
	withMember := podapi.Key{Namespace: "ns", Name: "with-member"}
	running := podapi.Key{Namespace: "ns", Name: "running"}
	waiting := podapi.Key{Namespace: "ns", Name: "waiting"}
	create(t, ctx, s, completed, rendezvous.Completed)
	create(t, ctx, s, failed, rendezvous.Failed)
	create(t, ctx, s, withMember, rendezvous.Completed, "m0")
	create(t, ctx, s, running, rendezvous.Running, "m0", "m1")
	create(t, ctx, s, waiting, rendezvous.Waiting)

	t0 := time.Now()
	for _, now := range []time.Time{t0, t0.Add(ttl - time.Second)} {
		if err := r.sweep(ctx, now); err != nil {
			t.Fatal(err)
		}
		for _, k := range []podapi.Key{completed, failed, withMember, running, waiting} {
			if !exists(t, ctx, s, k) {
				t.Fatalf("%s deleted %s after it was first seen; TTL is %s", k, now.Sub(t0), ttl)
			}
		}
	}
	if err := r.sweep(ctx, t0.Add(ttl)); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[podapi.Key]bool{completed: false, failed: false, withMember: true, running: true, waiting: true} {
		if got := exists(t, ctx, s, k); got != want {
			t.Errorf("after the TTL, %s exists: %v; want %v", k, got, want)
		}
	}
	// Nothing but the terminal group with a member, still there, ever goes.
	if err := r.sweep(ctx, t0.Add(10*ttl)); err != nil {
		t.Fatal(err)
	}
	for _, k := range []podapi.Key{withMember, running, waiting} {
		if !exists(t, ctx, s, k) {
			t.Errorf("%s deleted; it is not finished, or has a member", k)
		}
	}
}

// TestSweepRestartsTTLOnRejoin: a finished group joined again is no longer
// the group whose TTL ran; when it finishes again its TTL starts again.
func TestSweepRestartsTTLOnRejoin(t *testing.T) {
	s, ctx := newStore(t)
	const ttl = time.Hour
	r := &reaper{store: s, ttl: ttl, log: testLog(), seen: map[podapi.Key]seen{}}
	k := podapi.Key{Namespace: "ns", Name: "g"}
	rev := create(t, ctx, s, k, rendezvous.Completed)
	t0 := time.Now()
	if err := r.sweep(ctx, t0); err != nil {
		t.Fatal(err)
	}
	// Re-joined, and finished again, within the TTL.
	if ok, err := s.ResetState(ctx, k, rev, rendezvous.NewState(2, "env", 3), false); err != nil || !ok {
		t.Fatalf("reset: ok=%v err=%v", ok, err)
	}
	v, err := s.Load(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	done := *v.State
	done.Phase = rendezvous.Completed
	if ok, err := s.SwapState(ctx, k, v.StateRev, done); err != nil || !ok {
		t.Fatalf("finish again: ok=%v err=%v", ok, err)
	}
	t1 := t0.Add(ttl / 2)
	if err := r.sweep(ctx, t1); err != nil {
		t.Fatal(err)
	}
	if err := r.sweep(ctx, t0.Add(ttl)); err != nil {
		t.Fatal(err)
	}
	if !exists(t, ctx, s, k) {
		t.Fatalf("group deleted one TTL after its first finish, though it finished again since")
	}
	if err := r.sweep(ctx, t1.Add(ttl)); err != nil {
		t.Fatal(err)
	}
	if exists(t, ctx, s, k) {
		t.Fatalf("group still there one TTL after its second finish")
	}
}

// TestSweepKeepsGroupChangedAfterRead: the reaper read the group finished,
// then it changed before the TTL ran out, at a moment the reaper did not
// sweep; the deletion must see the change.
func TestSweepKeepsGroupChangedAfterRead(t *testing.T) {
	s, ctx := newStore(t)
	const ttl = time.Hour
	r := &reaper{store: s, ttl: ttl, log: testLog(), seen: map[podapi.Key]seen{}}
	k := podapi.Key{Namespace: "ns", Name: "g"}
	rev := create(t, ctx, s, k, rendezvous.Failed)
	t0 := time.Now()
	if err := r.sweep(ctx, t0); err != nil {
		t.Fatal(err)
	}
	// Another reaper's view: the group as it was read at t0 is due, but a
	// member joins again (the state resets) just before the deletion.
	if ok, err := s.ResetState(ctx, k, rev, rendezvous.NewState(2, "env", 3), false); err != nil || !ok {
		t.Fatalf("reset: ok=%v err=%v", ok, err)
	}
	if ok, err := s.DeleteGroup(ctx, k, r.seen[k].rev); err != nil || ok {
		t.Fatalf("delete at the revision read before the re-join: ok=%v err=%v; want false, nil", ok, err)
	}
	if err := r.sweep(ctx, t0.Add(ttl)); err != nil {
		t.Fatal(err)
	}
	if !exists(t, ctx, s, k) {
		t.Fatalf("group deleted after it was joined again")
	}
}

// TestRunWithReplicas runs two reapers, as two coordinator replicas would,
// and waits until they have deleted every finished group.
func TestRunWithReplicas(t *testing.T) {
	s, ctx := newStore(t)
	var finished []podapi.Key
	for _, name := range []string{"a", "b", "c"} {
		k := podapi.Key{Namespace: "ns", Name: name}
		create(t, ctx, s, k, rendezvous.Completed)
		finished = append(finished, k)
	}
	live := podapi.Key{Namespace: "ns", Name: "live"}
	create(t, ctx, s, live, rendezvous.Running, "m0")

	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			Run(rctx, s, Config{TTL: 200 * time.Millisecond, Interval: 20 * time.Millisecond}, testLog())
		}()
	}
	stopped := make(chan struct{})
	defer func() {
		stop()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return within 10s of its context's end")
		}
	}()
	go func() { wg.Wait(); close(stopped) }()

	deadline := time.Now().Add(20 * time.Second)
	for {
		n, err := s.CountGroups(ctx, "ns")
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d groups after 20s; want the finished ones deleted", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, k := range finished {
		if exists(t, ctx, s, k) {
			t.Errorf("%s not deleted", k)
		}
	}
	if !exists(t, ctx, s, live) {
		t.Errorf("%s deleted; it is running", live)
	}
}
