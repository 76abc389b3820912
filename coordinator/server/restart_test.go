package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/coordinator/embedetcd"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/coordinator/store"
	"github.com/muster-dev/muster/podapi"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// etcdURL is the client URL of the embedded etcd every test of this package
// shares; each test keeps its keys under a prefix of its own.
var etcdURL string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "server-test-etcd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "make etcd dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := embedetcd.Start(ctx, embedetcd.DefaultConfig(dir))
	if err != nil {
		fmt.Fprintln(os.Stderr, "start etcd:", err)
		return 1
	}
	defer e.Close()
	etcdURL = e.ClientURL
	return m.Run()
}

// fakeAccess answers what a SubjectAccessReview would: allowed lists the
// attributes the user may, by user name; it records every question.
type fakeAccess struct {
	mu      sync.Mutex
	allowed map[string][]auth.Attributes
	asked   []auth.Attributes
}

func (f *fakeAccess) May(_ context.Context, u *auth.User, a auth.Attributes) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, a)
	if slices.Contains(f.allowed[u.Name], a) {
		return nil
	}
	what := auth.Resource
	if a.Subresource != "" {
		what += "/" + a.Subresource
	}
	// As auth.Kube words it.
	return status.Errorf(codes.PermissionDenied, "user %s may not %s (RBAC: grant verb %s on resource %q of API group %q): %v", u.Name, a, a.Verb, what, auth.ResourceGroup, auth.ErrNotAllowed)
}

// newServer returns a Server on a store under a prefix of the test's own,
// and a context that bounds the test.
func newServer(t *testing.T, access Access) (*Server, *store.Store, context.Context) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("connect to %s: %v", etcdURL, err)
	}
	t.Cleanup(func() { cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	st := store.New(cli, "/test/"+t.Name()+"/")
	opts := DefaultOptions()
	opts.Access = access
	return New(st, nil, opts, slog.New(slog.NewTextHandler(io.Discard, nil))), st, ctx
}

// putGroup stores group k with state st.
func putGroup(t *testing.T, ctx context.Context, s *store.Store, k podapi.Key, st rendezvous.State) {
	t.Helper()
	if _, _, err := s.CreateState(ctx, k, st); err != nil {
		t.Fatalf("create %s: %v", k, err)
	}
}

// runningState is a released group of two, ready, restarted once, with one
// generation in its history.
func runningState() rendezvous.State {
	return rendezvous.State{Size: 2, Runtime: "env", Generation: 1, Phase: rendezvous.Running, Restarts: 1, MaxRestarts: 3,
		Assignment: []string{"m-0", "m-1"}, Ranks: map[string]int{"m-0": 0, "m-1": 1}, LeaderAddress: "10.0.0.1", MasterPort: 29500,
		CreatedMs: 1_000, StartedMs: 5_000, JoinedMs: 6_000, ReleasedMs: 7_000, ReadyMs: 9_000,
		History: []rendezvous.Generation{{Generation: 0, StartedMs: 1_000, JoinedMs: 2_000, ReleasedMs: 3_000, ReadyMs: 4_000, EndedMs: 5_000,
			Reason: "member m-1 (rank 1) exited with code 1", Member: "m-1"}}}
}

func TestRestartGroup(t *testing.T) {
	team := podapi.Key{Namespace: "team-a", Name: "llama"}
	failed := runningState()
	failed.Phase = rendezvous.Failed
	completed := runningState()
	completed.Phase = rendezvous.Completed
	alice := &auth.Identity{Name: "user alice", User: &auth.User{Name: "alice", Groups: []string{"system:authenticated"}}}
	bob := &auth.Identity{Name: "user bob", User: &auth.User{Name: "bob", Groups: []string{"system:authenticated"}}}
	restartLlama := auth.Attributes{Verb: "create", Namespace: "team-a", Name: "llama", Subresource: "restart"}
	tests := []struct {
		name   string
		id     *auth.Identity // nil: in-process (anonymous)
		access Access         // nil: no Kubernetes
		state  *rendezvous.State
		req    *musterv1.RestartGroupRequest
		// wantCode is the refusal (OK: restarted); wantMsg are substrings
		// of its message, or of the restart's reason in the history.
		wantCode codes.Code
		wantMsg  []string
		// wantAsked is the SubjectAccessReview the server must ask.
		wantAsked []auth.Attributes
	}{
		{
			name: "operator certificate", id: &auth.Identity{Name: "operator certificate \"ops\" (serial 1)", Operator: true},
			req:     &musterv1.RestartGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "llama"}, Reason: "new weights"},
			wantMsg: []string{`restarted by operator certificate "ops" (serial 1): new weights`},
		},
		{
			name: "anonymous on a loopback coordinator", id: &auth.Identity{Name: "anonymous", Anonymous: true},
			req:     &musterv1.RestartGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "llama"}, Reason: "  stuck in NCCL \t"},
			wantMsg: []string{"restarted by anonymous: stuck in NCCL"},
		},
		{
			name: "no reason", id: &auth.Identity{Name: "anonymous", Anonymous: true},
			req:     &musterv1.RestartGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "llama"}},
			wantMsg: []string{"restarted by anonymous"},
		},
		{
			name: "a user RBAC allows", id: alice, access: &fakeAccess{allowed: map[string][]auth.Attributes{"alice": {restartLlama}}},
			req:       &musterv1.RestartGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "llama"}, Reason: "new weights"},
			wantMsg:   []string{"restarted by user alice: new weights"},
			wantAsked: []auth.Attributes{restartLlama},
		},
		{
			name: "a user RBAC lets read only", id: bob,
			access:    &fakeAccess{allowed: map[string][]auth.Attributes{"bob": {{Verb: "get", Namespace: "team-a", Name: "llama"}}}},
			req:       &musterv1.RestartGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "llama"}},
			wantCode:  codes.PermissionDenied,
			wantMsg:   []string{"bob", "create", "groups/restart", "muster.dev", "team-a"},
			wantAsked: []auth.Attributes{restartLlama},
		},
		{
			name: "a user of a coordinator without Kubernetes", id: alice,
			req:      &musterv1.RestartGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "llama"}},
			wantCode: codes.PermissionDenied,
			wantMsg:  []string{"user alice", "may restart no group", "groups/restart", "muster.dev"},
		},
		{
			name: "a member of the group", id: &auth.Identity{Name: "pod team-a/m-0", Namespace: "team-a", Group: "llama", Member: "m-0", Addresses: []string{"10.0.0.1"}},
			access:   &fakeAccess{},
			req:      &musterv1.RestartGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "llama"}},
			wantCode: codes.PermissionDenied,
			wantMsg:  []string{"pod team-a/m-0", "may restart no group"},
		},
		{
			name: "reason too long", id: &auth.Identity{Name: "anonymous", Anonymous: true},
			req:      &musterv1.RestartGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "llama"}, Reason: strings.Repeat("x", 257)},
			wantCode: codes.InvalidArgument,
			wantMsg:  []string{"reason", "256 bytes", "got 257"},
		},
		{
			name: "reason of two lines", id: &auth.Identity{Name: "anonymous", Anonymous: true},
			req:      &musterv1.RestartGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "llama"}, Reason: "one\nrestarted by someone else"},
			wantCode: codes.InvalidArgument,
			wantMsg:  []string{"reason", "one line"},
		},
		{
			name: "reason not UTF-8", id: &auth.Identity{Name: "anonymous", Anonymous: true},
			req:      &musterv1.RestartGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "llama"}, Reason: "bad \xff"},
			wantCode: codes.InvalidArgument,
			wantMsg:  []string{"reason", "UTF-8"},
		},
		{
			name: "no group", id: &auth.Identity{Name: "anonymous", Anonymous: true},
			req:      &musterv1.RestartGroupRequest{},
			wantCode: codes.InvalidArgument,
			wantMsg:  []string{"group"},
		},
		{
			name: "group that does not exist", id: &auth.Identity{Name: "anonymous", Anonymous: true},
			req:      &musterv1.RestartGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "nope"}},
			wantCode: codes.NotFound,
			wantMsg:  []string{"team-a/nope", "does not exist"},
		},
		{
			name: "failed group", id: &auth.Identity{Name: "anonymous", Anonymous: true}, state: &failed,
			req:      &musterv1.RestartGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "llama"}},
			wantCode: codes.FailedPrecondition,
			wantMsg:  []string{"team-a/llama", "failed"},
		},
		{
			name: "completed group", id: &auth.Identity{Name: "anonymous", Anonymous: true}, state: &completed,
			req:      &musterv1.RestartGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "llama"}},
			wantCode: codes.FailedPrecondition,
			wantMsg:  []string{"team-a/llama", "completed"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, st, ctx := newServer(t, tc.access)
			initial := runningState()
			if tc.state != nil {
				initial = *tc.state
			}
			putGroup(t, ctx, st, team, initial)
			if tc.id != nil {
				ctx = auth.NewContext(ctx, tc.id)
			}
			g, err := s.RestartGroup(ctx, tc.req)
			if fa, ok := tc.access.(*fakeAccess); ok && !slices.Equal(fa.asked, tc.wantAsked) {
				t.Errorf("asked RBAC %v, want %v", fa.asked, tc.wantAsked)
			}
			after, lerr := st.Load(ctx, team)
			if lerr != nil {
				t.Fatal(lerr)
			}
			if tc.wantCode != codes.OK {
				if status.Code(err) != tc.wantCode || g != nil {
					t.Fatalf("RestartGroup = %v, %v; want %v", g, err, tc.wantCode)
				}
				for _, w := range tc.wantMsg {
					if msg := status.Convert(err).Message(); !strings.Contains(msg, w) {
						t.Errorf("message %q does not name %q", msg, w)
					}
				}
				if after.State.Generation != initial.Generation || len(after.State.History) != len(initial.History) {
					t.Errorf("refused, yet the group moved to generation %d with %d generations of history", after.State.Generation, len(after.State.History))
				}
				return
			}
			if err != nil {
				t.Fatalf("RestartGroup: %v", err)
			}
			// The answer and the stored state agree: the next generation,
			// waiting at once, the budget unchanged, the ended one in the
			// history with who asked and why.
			got := after.State
			if got.Generation != 2 || got.Phase != rendezvous.Waiting || got.RestartAfterMs != 0 || got.MaxRestarts-got.Restarts != 2 {
				t.Errorf("stored state: generation %d phase %s restart after %d, restarts %d/%d; want generation 2, Waiting at once, 2 restarts left",
					got.Generation, got.Phase, got.RestartAfterMs, got.Restarts, got.MaxRestarts)
			}
			if !slices.Equal(got.Assignment, nil) || got.Ranks["m-1"] != 1 {
				t.Errorf("stored assignment %v ranks %v: want none until the barrier, ranks kept", got.Assignment, got.Ranks)
			}
			if g.GetGeneration() != 2 || g.GetPhase() != musterv1.Phase_PHASE_WAITING {
				t.Errorf("answer: generation %d phase %v, want 2 waiting", g.GetGeneration(), g.GetPhase())
			}
			h := g.GetHistory()
			if len(h) != 2 || h[0].GetGeneration() != 0 || h[1].GetGeneration() != 1 {
				t.Fatalf("answer's history %v, want generations 0 and 1", h)
			}
			last := h[1]
			if last.GetEndReason() != tc.wantMsg[0] || last.GetEndMember() != "" || last.GetStartedMs() != 5_000 || last.GetReadyMs() != 9_000 || last.GetEndedMs() < 9_000 {
				t.Errorf("generation 1 recorded as %v, want reason %q, no member, started 5000, ready 9000, ended now", last, tc.wantMsg[0])
			}
			if cur := g.GetCurrent(); cur.GetGeneration() != 2 || cur.GetStartedMs() != last.GetEndedMs() || cur.GetReadyMs() != 0 || cur.GetEndReason() != "" {
				t.Errorf("current generation %v, want 2 begun when 1 ended, not ready", cur)
			}
		})
	}
}

// GetGroup tells a group's story: when it was created, the current
// generation's times, and each earlier generation with why it ended; a
// failed group's current generation is its last, with why it failed.
func TestGetGroupHistory(t *testing.T) {
	k := podapi.Key{Namespace: "team-a", Name: "llama"}
	failed := runningState()
	d := rendezvous.FailAt(&failed, time.UnixMilli(20_000), "m-0", "member m-0 (rank 0) exited with code 127")
	tests := []struct {
		name        string
		state       rendezvous.State
		wantCurrent *musterv1.GenerationRecord
		wantHistory []int64
	}{
		{
			name:        "running",
			state:       runningState(),
			wantCurrent: &musterv1.GenerationRecord{Generation: 1, StartedMs: 5_000, JoinedMs: 6_000, ReleasedMs: 7_000, ReadyMs: 9_000},
			wantHistory: []int64{0},
		},
		{
			name:  "failed",
			state: d.Next,
			wantCurrent: &musterv1.GenerationRecord{Generation: 1, StartedMs: 5_000, JoinedMs: 6_000, ReleasedMs: 7_000, ReadyMs: 9_000, EndedMs: 20_000,
				EndReason: "member m-0 (rank 0) exited with code 127", EndMember: "m-0"},
			wantHistory: []int64{0, 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, st, ctx := newServer(t, nil)
			putGroup(t, ctx, st, k, tc.state)
			g, err := s.GetGroup(ctx, &musterv1.GetGroupRequest{Group: &musterv1.GroupRef{Namespace: "team-a", Name: "llama"}})
			if err != nil {
				t.Fatalf("GetGroup: %v", err)
			}
			if g.GetCreatedMs() != 1_000 {
				t.Errorf("created_ms = %d, want 1000", g.GetCreatedMs())
			}
			c := g.GetCurrent()
			w := tc.wantCurrent
			if c.GetGeneration() != w.Generation || c.GetStartedMs() != w.StartedMs || c.GetJoinedMs() != w.JoinedMs || c.GetReleasedMs() != w.ReleasedMs ||
				c.GetReadyMs() != w.ReadyMs || c.GetEndedMs() != w.EndedMs || c.GetEndReason() != w.EndReason || c.GetEndMember() != w.EndMember {
				t.Errorf("current = %v\nwant      %v", c, w)
			}
			var gens []int64
			for _, h := range g.GetHistory() {
				gens = append(gens, h.GetGeneration())
			}
			if !slices.Equal(gens, tc.wantHistory) {
				t.Errorf("history generations %v, want %v", gens, tc.wantHistory)
			}
			first := g.GetHistory()[0]
			if first.GetStartedMs() != 1_000 || first.GetJoinedMs() != 2_000 || first.GetReleasedMs() != 3_000 || first.GetReadyMs() != 4_000 ||
				first.GetEndedMs() != 5_000 || first.GetEndReason() != "member m-1 (rank 1) exited with code 1" || first.GetEndMember() != "m-1" {
				t.Errorf("generation 0 = %v, want its times 1000..5000, why and member m-1", first)
			}
		})
	}
}
