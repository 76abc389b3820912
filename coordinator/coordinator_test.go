package coordinator_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/coordinator/testcoord"
	"github.com/muster-dev/muster/podapi"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

const wait = 20 * time.Second

func ref(name string) *musterv1.GroupRef { return &musterv1.GroupRef{Namespace: "test", Name: name} }

func ord(v int64) *int64 { return &v }

// member is a raw API client standing in for an agent.
type member struct {
	t     *testing.T
	c     musterv1.RendezvousClient
	group string
	id    string
	addr  string
	ordin *int64
	size  int32
	// rankOrder and domain go into Join (rank order topology).
	rankOrder, domain string
	events            chan *musterv1.GroupEvent
	errs              chan error
	cancel            context.CancelFunc
}

func newMember(t *testing.T, c musterv1.RendezvousClient, group, id, addr string, size int32, o *int64) *member {
	return &member{t: t, c: c, group: group, id: id, addr: addr, size: size, ordin: o}
}

func (m *member) join(gen int64) *musterv1.JoinResponse {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	resp, err := m.c.Join(ctx, &musterv1.JoinRequest{Group: ref(m.group), MemberId: m.id, Address: m.addr, Ordinal: m.ordin, Size: m.size, MasterPort: 29500, Generation: gen, RankOrder: m.rankOrder, TopologyDomain: m.domain})
	if err != nil {
		m.t.Fatalf("join %s: %v", m.id, err)
	}
	return resp
}

// watch opens the member's event stream; events arrive on m.events.
func (m *member) watch() {
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.t.Cleanup(cancel)
	// The reader keeps its own channels: a second watch of the same
	// member replaces m's while the first stream's reader may still run.
	events, errs := make(chan *musterv1.GroupEvent, 100), make(chan error, 1)
	m.events, m.errs = events, errs
	stream, err := m.c.Watch(ctx, &musterv1.WatchRequest{Group: ref(m.group), MemberId: m.id})
	if err != nil {
		m.t.Fatalf("watch %s: %v", m.id, err)
	}
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				errs <- err
				return
			}
			events <- ev
		}
	}()
}

// next waits for the first event accepted by keep, skipping others.
func (m *member) next(what string, keep func(*musterv1.GroupEvent) bool) *musterv1.GroupEvent {
	m.t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case ev := <-m.events:
			if keep(ev) {
				return ev
			}
		case err := <-m.errs:
			// Events sent just before the stream ended are still buffered.
			for {
				select {
				case ev := <-m.events:
					if keep(ev) {
						return ev
					}
					continue
				default:
				}
				break
			}
			m.t.Fatalf("%s: stream ended while waiting for %s: %v", m.id, what, err)
		case <-deadline:
			m.t.Fatalf("%s: no %s within %s", m.id, what, wait)
		}
	}
}

func (m *member) assignment() *musterv1.Assignment {
	m.t.Helper()
	return m.next("assignment", func(ev *musterv1.GroupEvent) bool { return ev.GetAssignment() != nil }).GetAssignment()
}

func (m *member) restart() *musterv1.Restart {
	m.t.Helper()
	return m.next("restart", func(ev *musterv1.GroupEvent) bool { return ev.GetRestart() != nil }).GetRestart()
}

func (m *member) report(gen int64, state musterv1.RuntimeState, code int32) *musterv1.ReportStatusResponse {
	m.t.Helper()
	resp, err := m.c.ReportStatus(context.Background(), &musterv1.ReportStatusRequest{Group: ref(m.group), MemberId: m.id, Generation: gen, State: state, ExitCode: code})
	if err != nil {
		m.t.Fatalf("report %s: %v", m.id, err)
	}
	return resp
}

func getGroup(t *testing.T, c musterv1.RendezvousClient, name string) *musterv1.Group {
	t.Helper()
	g, err := c.GetGroup(context.Background(), &musterv1.GetGroupRequest{Group: ref(name)})
	if err != nil {
		t.Fatalf("get group %s: %v", name, err)
	}
	return g
}

func TestBarrierReleasesEveryoneAtOnceWithOrdinalRanks(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	c := testcoord.Client(t, co.Addr())
	// Names sort differently from ordinals on purpose: w-10 must be rank 3.
	ords := map[string]int64{"w-10": 10, "w-2": 2, "w-1": 1, "w-0": 0}
	wantRank := map[string]int32{"w-0": 0, "w-1": 1, "w-2": 2, "w-10": 3}
	var ms []*member
	for i, id := range []string{"w-10", "w-2", "w-1", "w-0"} {
		m := newMember(t, c, "barrier", id, fmt.Sprintf("127.0.0.%d", i+2), 4, ord(ords[id]))
		ms = append(ms, m)
	}
	for _, m := range ms[:3] {
		m.join(-1)
		m.watch()
	}
	// Three of four: everyone hears 3/4 and nobody is released.
	for _, m := range ms[:3] {
		m.next("progress 3/4", func(ev *musterv1.GroupEvent) bool {
			if ev.GetAssignment() != nil {
				t.Fatalf("%s released before the fourth member joined", m.id)
			}
			return ev.GetProgress().GetJoined() == 3
		})
	}
	if g := getGroup(t, c, "barrier"); g.Phase != musterv1.Phase_PHASE_WAITING {
		t.Fatalf("phase %v with 3 of 4 joined, want WAITING", g.Phase)
	}
	ms[3].join(-1)
	ms[3].watch()
	var leader string
	for _, m := range ms {
		a := m.assignment()
		if a.Rank != wantRank[m.id] || a.WorldSize != 4 || a.Generation != 0 {
			t.Errorf("%s: rank %d world %d gen %d, want rank %d world 4 gen 0", m.id, a.Rank, a.WorldSize, a.Generation, wantRank[m.id])
		}
		if a.LeaderAddress != "127.0.0.5" || a.LeaderMemberId != "w-0" || a.MasterPort != 29500 {
			t.Errorf("%s: leader %s (%s) port %d, want 127.0.0.5 (w-0) port 29500", m.id, a.LeaderAddress, a.LeaderMemberId, a.MasterPort)
		}
		if leader == "" {
			leader = a.LeaderAddress
		} else if leader != a.LeaderAddress {
			t.Errorf("members disagree on the leader: %s vs %s", leader, a.LeaderAddress)
		}
	}
}

// With rank order topology, members of one domain hold neighbouring ranks,
// ordinal 0 stays rank 0, and the group status says so.
func TestRanksFollowTopologyOnRequest(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	c := testcoord.Client(t, co.Addr())
	domains := []string{"rack-a", "rack-b", "rack-a", "rack-b"} // by ordinal
	want := map[string]int32{"p-0": 0, "p-2": 1, "p-1": 2, "p-3": 3}
	var ms []*member
	for i, d := range domains {
		m := newMember(t, c, "placed", fmt.Sprintf("p-%d", i), fmt.Sprintf("127.0.0.%d", i+2), 4, ord(int64(i)))
		m.rankOrder, m.domain = "topology", d
		ms = append(ms, m)
	}
	// A member that asks for ordinal order is refused, naming both orders.
	for _, m := range ms {
		m.join(-1)
		m.watch()
		if m == ms[0] {
			_, err := c.Join(context.Background(), &musterv1.JoinRequest{Group: ref("placed"), MemberId: "odd", Address: "127.0.0.9", Size: 4, RankOrder: "ordinal"})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `rank order "ordinal" disagrees with the group's "topology"`) {
				t.Fatalf("join with another rank order: %v, want InvalidArgument naming both", err)
			}
		}
	}
	for _, m := range ms {
		if a := m.assignment(); a.Rank != want[m.id] {
			t.Errorf("%s (%s): rank %d, want %d", m.id, m.domain, a.Rank, want[m.id])
		}
	}
	g := getGroup(t, c, "placed")
	if g.RankOrder != "topology" {
		t.Errorf("group status rank_order %q, want topology", g.RankOrder)
	}
	var order []string
	for _, m := range g.Members {
		order = append(order, fmt.Sprintf("%d:%s@%s", m.Rank, m.Id, m.TopologyDomain))
	}
	if got := strings.Join(order, " "); got != "0:p-0@rack-a 1:p-2@rack-a 2:p-1@rack-b 3:p-3@rack-b" {
		t.Errorf("group status members %s", got)
	}
	// Without the request, ranks follow ordinals whatever the domains.
	for i, d := range domains {
		m := newMember(t, c, "ordinal", fmt.Sprintf("q-%d", i), fmt.Sprintf("127.0.0.%d", i+2), 4, ord(int64(i)))
		m.domain = d
		m.join(-1)
		m.watch()
		ms[i] = m
	}
	for i, m := range ms {
		if a := m.assignment(); a.Rank != int32(i) {
			t.Errorf("%s: rank %d, want its ordinal %d", m.id, a.Rank, i)
		}
	}
	if g := getGroup(t, c, "ordinal"); g.RankOrder != "ordinal" {
		t.Errorf("group status rank_order %q, want ordinal", g.RankOrder)
	}
}

func TestTwoReplicasOnOneEtcdAgreeOnOneAssignment(t *testing.T) {
	a := testcoord.Start(t, testcoord.Config(t))
	cfgB := testcoord.Config(t)
	cfgB.EtcdEndpoints = []string{a.EtcdURL()}
	b := testcoord.Start(t, cfgB)
	clients := []musterv1.RendezvousClient{testcoord.Client(t, a.Addr()), testcoord.Client(t, b.Addr())}

	const n = 8
	ms := make([]*member, n)
	var wg sync.WaitGroup
	for i := range ms {
		// No ordinals: ranks follow arrival, which races across replicas.
		ms[i] = newMember(t, clients[i%2], "replicas", fmt.Sprintf("m%d", i), fmt.Sprintf("127.0.1.%d", i+1), n, nil)
		wg.Add(1)
		go func(m *member) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			if _, err := m.c.Join(ctx, &musterv1.JoinRequest{Group: ref(m.group), MemberId: m.id, Address: m.addr, Size: n, Generation: -1}); err != nil {
				t.Errorf("join %s: %v", m.id, err)
			}
		}(ms[i])
	}
	wg.Wait()
	seen := map[int32]string{}
	var first *musterv1.Assignment
	for _, m := range ms {
		m.watch()
		as := m.assignment()
		if other, dup := seen[as.Rank]; dup {
			t.Fatalf("rank %d handed to both %s and %s", as.Rank, other, m.id)
		}
		seen[as.Rank] = m.id
		if first == nil {
			first = as
		} else if as.LeaderAddress != first.LeaderAddress || as.MasterPort != first.MasterPort || as.Generation != first.Generation || as.LeaderMemberId != first.LeaderMemberId {
			t.Fatalf("replicas disagree: %v vs %v", as, first)
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct ranks, want %d", len(seen), n)
	}
	ga, gb := getGroup(t, clients[0], "replicas"), getGroup(t, clients[1], "replicas")
	if ga.Generation != gb.Generation || len(ga.Members) != len(gb.Members) {
		t.Fatalf("replicas report different groups: %v / %v", ga, gb)
	}
}

func TestFailedRuntimeRestartsGroupWithSameRanks(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	c := testcoord.Client(t, co.Addr())
	a, b := runningPair(t, c, "restart")
	a.report(0, musterv1.RuntimeState_RUNTIME_STATE_READY, 0)
	b.report(0, musterv1.RuntimeState_RUNTIME_STATE_EXITED, 3)
	for _, m := range []*member{a, b} {
		r := m.restart()
		if r.Generation != 1 || !strings.Contains(r.Reason, "member b (rank 1) exited with code 3") {
			t.Fatalf("%s: restart %v, want generation 1 naming b's exit code", m.id, r)
		}
	}
	// A report from the old generation is ignored, not applied.
	if resp := a.report(0, musterv1.RuntimeState_RUNTIME_STATE_EXITED, 9); !resp.Stale || resp.CurrentGeneration != 1 {
		t.Fatalf("old-generation report: %v, want stale with current generation 1", resp)
	}
	a.join(1)
	b.join(1)
	for m, want := range map[*member]int32{a: 0, b: 1} {
		as := m.assignment()
		if as.Generation != 1 || as.Rank != want {
			t.Fatalf("%s: generation %d rank %d, want generation 1 rank %d", m.id, as.Generation, as.Rank, want)
		}
	}
	g := getGroup(t, c, "restart")
	if g.Restarts != 1 || g.Generation != 1 || !strings.Contains(g.FirstError, "exited with code 3") {
		t.Fatalf("group %v, want 1 restart in generation 1 with b's error", g)
	}
	// Both finish: the group completes and says so.
	a.report(1, musterv1.RuntimeState_RUNTIME_STATE_EXITED, 0)
	b.report(1, musterv1.RuntimeState_RUNTIME_STATE_EXITED, 0)
	for _, m := range []*member{a, b} {
		m.next("completed", func(ev *musterv1.GroupEvent) bool { return ev.GetCompleted() != nil })
	}
}

func TestLostMemberRestartsGroupAndKeepsRankOnReturn(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	c := testcoord.Client(t, co.Addr())
	a := newMember(t, c, "lost", "a", "127.0.0.2", 2, nil)
	b := newMember(t, c, "lost", "b", "127.0.0.3", 2, nil)
	a.join(-1)
	a.watch()
	b.join(-1)
	b.watch()
	rankB := b.assignment().Rank
	a.assignment()
	// b's agent vanishes: its stream closes and nobody keeps its lease.
	b.cancel()
	start := time.Now()
	r := a.restart()
	if !strings.Contains(r.Reason, "member b was lost") {
		t.Fatalf("restart reason %q, want it to name b as lost", r.Reason)
	}
	t.Logf("lost member noticed after %s (member TTL 2s)", time.Since(start).Round(time.Millisecond))
	// b comes back as a new process (fresh join) and keeps its rank.
	a.join(1)
	b.join(-1)
	b.watch()
	if got := b.assignment(); got.Rank != rankB || got.Generation != 1 {
		t.Fatalf("returning b: rank %d gen %d, want rank %d gen 1", got.Rank, got.Generation, rankB)
	}
}

// runningPair joins members a and b (ordinals 0 and 1) to a new group of
// 2, opens their streams and waits until both hold their assignment.
func runningPair(t *testing.T, c musterv1.RendezvousClient, group string) (a, b *member) {
	t.Helper()
	a = newMember(t, c, group, "a", "127.0.0.2", 2, ord(0))
	b = newMember(t, c, group, "b", "127.0.0.3", 2, ord(1))
	for _, m := range []*member{a, b} {
		m.join(-1)
		m.watch()
	}
	a.assignment()
	b.assignment()
	return a, b
}

// While a member's stream is open its lease is renewed: a group whose
// members watch stays as it is for three times the member TTL, with no
// restart and nobody lost.
func TestWatchedMembersOutliveTheirTTL(t *testing.T) {
	cfg := testcoord.Config(t)
	co := testcoord.Start(t, cfg)
	c := testcoord.Client(t, co.Addr())
	a, b := runningPair(t, c, "kept")
	deadline := time.After(3 * cfg.MemberTTL)
	for _, m := range []*member{a, b} {
		for done := false; !done; {
			select {
			case ev := <-m.events:
				if ev.GetRestart() != nil || ev.GetFailed() != nil {
					t.Fatalf("member %s got %v while every member watched", m.id, ev)
				}
			case err := <-m.errs:
				t.Fatalf("member %s's stream ended: %v", m.id, err)
			case <-deadline:
				done = true
				deadline = time.After(0)
			}
		}
	}
	if g := getGroup(t, c, "kept"); len(g.Members) != 2 || g.Generation != 0 || g.Phase != musterv1.Phase_PHASE_RUNNING {
		t.Fatalf("group after %s of watching: %v; want both members, generation 0, running", 3*cfg.MemberTTL, g)
	}
}

func TestFreshRejoinOfRunningMemberRestartsGroup(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	c := testcoord.Client(t, co.Addr())
	a, b := runningPair(t, c, "rejoin")
	// b's agent restarted (same member id, fresh process): a must restart
	// too, since its runtime's peer is gone.
	if resp := b.join(-1); resp.Generation != 1 {
		t.Fatalf("fresh rejoin landed in generation %d, want 1", resp.Generation)
	}
	if r := a.restart(); r.Generation != 1 || !strings.Contains(r.Reason, "member b restarted") {
		t.Fatalf("a got %v, want a restart to generation 1 naming b", r)
	}
}

func TestMaxRestartsEndsInFailedWithFirstError(t *testing.T) {
	cfg := testcoord.Config(t)
	cfg.MaxRestarts = 1
	co := testcoord.Start(t, cfg)
	c := testcoord.Client(t, co.Addr())
	a := newMember(t, c, "budget", "a", "127.0.0.2", 1, nil)
	a.join(-1)
	a.watch()
	a.assignment()
	a.report(0, musterv1.RuntimeState_RUNTIME_STATE_EXITED, 5)
	a.restart()
	a.join(1)
	a.assignment()
	a.report(1, musterv1.RuntimeState_RUNTIME_STATE_EXITED, 6)
	f := a.next("failed", func(ev *musterv1.GroupEvent) bool { return ev.GetFailed() != nil }).GetFailed()
	if !strings.Contains(f.Reason, "exited with code 6") || f.MemberId != "a" {
		t.Fatalf("failed event %v, want the failure that ended the group (code 6, member a)", f)
	}
	g := getGroup(t, c, "budget")
	if g.Phase != musterv1.Phase_PHASE_FAILED || g.FailedMember != "a" {
		t.Fatalf("group %v, want FAILED by a", g)
	}
}

func TestBadInputIsRefusedAndGroupSurvives(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	c := testcoord.Client(t, co.Addr())
	good := newMember(t, c, "strict", "m0", "127.0.0.2", 2, nil)
	good.join(-1)
	good2 := newMember(t, c, "strict", "m1", "127.0.0.3", 2, nil)
	good2.join(-1)

	join := func(mut func(r *musterv1.JoinRequest)) *musterv1.JoinRequest {
		r := &musterv1.JoinRequest{Group: ref("strict"), MemberId: "m9", Address: "127.0.0.9", Size: 2, Generation: -1}
		mut(r)
		return r
	}
	tests := []struct {
		name string
		req  *musterv1.JoinRequest
		code codes.Code
		want []string
	}{
		{"size disagrees", join(func(r *musterv1.JoinRequest) { r.Size = 4 }), codes.InvalidArgument, []string{"size 4 disagrees with group size 2"}},
		{"member beyond size", join(func(r *musterv1.JoinRequest) {}), codes.ResourceExhausted, []string{"group is full", "2 of 2", `"m9" is not one of them`}},
		{"runtime disagrees", join(func(r *musterv1.JoinRequest) { r.MemberId = "m0"; r.Runtime = "torchrun" }), codes.InvalidArgument, []string{`runtime "torchrun" disagrees with the group's runtime "env"`}},
		{"empty member id", join(func(r *musterv1.JoinRequest) { r.MemberId = "" }), codes.InvalidArgument, []string{"member_id is empty"}},
		{"oversized member id", join(func(r *musterv1.JoinRequest) { r.MemberId = strings.Repeat("x", 300) }), codes.InvalidArgument, []string{"member_id", "limit is 253"}},
		{"empty group", join(func(r *musterv1.JoinRequest) { r.Group = ref("") }), codes.InvalidArgument, []string{"group.name is empty"}},
		{"oversized group", join(func(r *musterv1.JoinRequest) { r.Group = ref(strings.Repeat("g", 64)) }), codes.InvalidArgument, []string{"group.name", "limit is 63"}},
		{"missing group", join(func(r *musterv1.JoinRequest) { r.Group = nil }), codes.InvalidArgument, []string{"group is missing"}},
		{"size zero", join(func(r *musterv1.JoinRequest) { r.Size = 0 }), codes.InvalidArgument, []string{"size 0 is out of range"}},
		{"negative size", join(func(r *musterv1.JoinRequest) { r.Size = -3 }), codes.InvalidArgument, []string{"size -3 is out of range"}},
		{"negative ordinal", join(func(r *musterv1.JoinRequest) { r.Ordinal = ord(-1) }), codes.InvalidArgument, []string{"ordinal -1 is negative"}},
		{"empty address", join(func(r *musterv1.JoinRequest) { r.Address = "" }), codes.InvalidArgument, []string{"address is empty"}},
		{"bad port", join(func(r *musterv1.JoinRequest) { r.MasterPort = 70000 }), codes.InvalidArgument, []string{"master_port 70000"}},
		{"shell in the address", join(func(r *musterv1.JoinRequest) { r.MemberId = "m0"; r.Address = "$(id>x)" }), codes.InvalidArgument, []string{`address "$(id>x)" is not an IP address or host name`}},
		{"unknown runtime", join(func(r *musterv1.JoinRequest) { r.Group = ref("other"); r.Runtime = "nope" }), codes.InvalidArgument, []string{`runtime "nope" is not a known preset`}},
		{"group too large", join(func(r *musterv1.JoinRequest) { r.Group = ref("huge"); r.Size = 9000 }), codes.ResourceExhausted, []string{"limit of 8192 members", "--max-group-size"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Join(context.Background(), tc.req)
			st := status.Convert(err)
			if st.Code() != tc.code {
				t.Fatalf("code %v (%v), want %v", st.Code(), err, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(st.Message(), w) {
					t.Errorf("message %q does not contain %q", st.Message(), w)
				}
			}
		})
	}
	badReport := []struct {
		name string
		req  *musterv1.ReportStatusRequest
		code codes.Code
	}{
		{"unknown state", &musterv1.ReportStatusRequest{Group: ref("strict"), MemberId: "m0"}, codes.InvalidArgument},
		{"unknown group", &musterv1.ReportStatusRequest{Group: ref("nope"), MemberId: "m0", State: musterv1.RuntimeState_RUNTIME_STATE_READY}, codes.NotFound},
		{"bad member", &musterv1.ReportStatusRequest{Group: ref("strict"), MemberId: "a/b", State: musterv1.RuntimeState_RUNTIME_STATE_READY}, codes.InvalidArgument},
	}
	for _, tc := range badReport {
		t.Run("report "+tc.name, func(t *testing.T) {
			_, err := c.ReportStatus(context.Background(), tc.req)
			if got := status.Code(err); got != tc.code {
				t.Fatalf("code %v (%v), want %v", got, err, tc.code)
			}
		})
	}
	// The group is untouched: size 2, both real members, and it still works.
	g := getGroup(t, c, "strict")
	if g.Size != 2 || len(g.Members) != 2 {
		t.Fatalf("group after bad input: %v", g)
	}
	good.watch()
	if as := good.assignment(); as.WorldSize != 2 {
		t.Fatalf("world size %d after bad input, want 2", as.WorldSize)
	}
}

func TestCoordinatorRestartLosesNothing(t *testing.T) {
	cfg := testcoord.Config(t)
	co := testcoord.Start(t, cfg)
	c := testcoord.Client(t, co.Addr())
	for i, id := range []string{"a", "b"} {
		newMember(t, c, "durable", id, fmt.Sprintf("127.0.0.%d", i+2), 3, nil).join(-1)
	}
	co.Close()
	// Same data dir and ports: the embedded etcd comes back with its data.
	cfg.Listen = co.Addr()
	co2 := testcoord.Start(t, cfg)
	c2 := testcoord.Client(t, co2.Addr())
	g := getGroup(t, c2, "durable")
	if g.Size != 3 || g.Phase != musterv1.Phase_PHASE_WAITING {
		t.Fatalf("group after restart: %v", g)
	}
	// Members a and b outlive the restart only if their leases did (2s TTL,
	// nobody watching): what must survive is the group and its size.
	_, err := c2.Join(context.Background(), &musterv1.JoinRequest{Group: ref("durable"), MemberId: "c", Address: "127.0.0.4", Size: 5, Generation: -1})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "group size 3") {
		t.Fatalf("join with wrong size after restart: %v, want InvalidArgument naming size 3", err)
	}
}

func TestConfigValidateNamesTheField(t *testing.T) {
	tests := []struct {
		mut  func(*coordinator.Config)
		want string
	}{
		{func(c *coordinator.Config) { c.Listen = "nope" }, "--listen"},
		{func(c *coordinator.Config) { c.DataDir = "" }, "--data-dir"},
		{func(c *coordinator.Config) { c.MemberTTL = time.Second }, "--member-ttl"},
		{func(c *coordinator.Config) { c.MaxRestarts = -1 }, "--max-restarts"},
		{func(c *coordinator.Config) { c.Prefix = "x" }, "--etcd-prefix"},
	}
	for _, tc := range tests {
		c := coordinator.DefaultConfig()
		tc.mut(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want an error naming %s", err, tc.want)
		}
	}
}

func TestReadyHookFollowsGroupReadiness(t *testing.T) {
	type call struct {
		gen     int64
		ready   bool
		members int
	}
	calls := make(chan call, 16)
	cfg := testcoord.Config(t)
	cfg.ReadyHook = func(k podapi.Key, gen int64, _ rendezvous.Phase, ready bool, members []string, msg string) {
		if k.Name == "hooked" {
			calls <- call{gen, ready, len(members)}
		}
	}
	co := testcoord.Start(t, cfg)
	c := testcoord.Client(t, co.Addr())
	a, b := runningPair(t, c, "hooked")
	a.report(0, musterv1.RuntimeState_RUNTIME_STATE_READY, 0)
	b.report(0, musterv1.RuntimeState_RUNTIME_STATE_READY, 0)
	want := func(w call) {
		t.Helper()
		deadline := time.After(wait)
		for {
			select {
			case got := <-calls:
				if got == w {
					return
				}
			case <-deadline:
				t.Fatalf("hook never called with %+v", w)
			}
		}
	}
	want(call{gen: 0, ready: true, members: 2})
	// Both members also hear it on their streams.
	for _, m := range []*member{a, b} {
		m.next("readiness", func(ev *musterv1.GroupEvent) bool { return ev.GetReadiness().GetReady() })
	}
	b.report(0, musterv1.RuntimeState_RUNTIME_STATE_EXITED, 1)
	want(call{gen: 1, ready: false, members: 2})
}

func TestCrashLoopBacksOffThenFails(t *testing.T) {
	cfg := testcoord.Config(t)
	cfg.MaxRestarts = 3
	co := testcoord.Start(t, cfg)
	c := testcoord.Client(t, co.Addr())
	a := newMember(t, c, "loop", "a", "127.0.0.2", 1, nil)
	a.join(-1)
	a.watch()
	a.assignment()
	var waits []time.Duration
	for gen := int64(0); gen < 3; gen++ {
		a.report(gen, musterv1.RuntimeState_RUNTIME_STATE_EXITED, 1)
		r := a.restart()
		start := time.Now()
		a.join(r.Generation)
		if as := a.assignment(); as.Generation != gen+1 {
			t.Fatalf("released generation %d, want %d", as.Generation, gen+1)
		}
		waits = append(waits, time.Since(start))
	}
	// Restart 1 is immediate; restarts 2 and 3 wait 1s and 2s.
	if waits[0] > 900*time.Millisecond || waits[1] < 900*time.Millisecond || waits[2] < 1900*time.Millisecond {
		t.Fatalf("barrier waits %v, want about [0s 1s 2s]", waits)
	}
	a.report(3, musterv1.RuntimeState_RUNTIME_STATE_EXITED, 1)
	f := a.next("failed", func(ev *musterv1.GroupEvent) bool { return ev.GetFailed() != nil }).GetFailed()
	if !strings.Contains(f.Reason, "exited with code 1") {
		t.Fatalf("failed: %v", f)
	}
	t.Logf("barrier waits per restart: %v", waits)
}

func TestPeerLostIsConfirmedBeforeAnyRestart(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	c := testcoord.Client(t, co.Addr())
	// b's "agent" answers on its gossip port; c's does not.
	alivePort, deadPort := gossipPorts(t)
	ms := []*member{
		newMember(t, c, "gossip", "a", "127.0.0.2", 3, ord(0)),
		newMember(t, c, "gossip", "b", "127.0.0.3", 3, ord(1)),
		newMember(t, c, "gossip", "c", "127.0.0.4", 3, ord(2)),
	}
	ports := []int{0, alivePort, deadPort}
	for i, m := range ms {
		if _, err := c.Join(context.Background(), &musterv1.JoinRequest{Group: ref("gossip"), MemberId: m.id, Address: m.addr, Ordinal: m.ordin, Size: 3, Generation: -1, GossipPort: int32(ports[i])}); err != nil {
			t.Fatal(err)
		}
		m.watch()
	}
	for _, m := range ms {
		m.assignment()
	}
	report := func(lost string) *musterv1.ReportPeerLostResponse {
		resp, err := c.ReportPeerLost(context.Background(), &musterv1.ReportPeerLostRequest{Group: ref("gossip"), MemberId: "a", LostMemberId: lost, Generation: 0})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// A false suspicion: b's agent answers, nothing restarts.
	if r := report("b"); r.Confirmed {
		t.Fatalf("suspicion of a live member confirmed: %v", r)
	}
	if g := getGroup(t, c, "gossip"); g.Generation != 0 || g.Phase != musterv1.Phase_PHASE_RUNNING {
		t.Fatalf("group after a false suspicion: generation %d phase %v", g.Generation, g.Phase)
	}
	// c's agent is gone: confirmed, the group restarts at once.
	if r := report("c"); !r.Confirmed {
		t.Fatalf("suspicion of a dead member not confirmed: %v", r)
	}
	if r := ms[0].restart(); !strings.Contains(r.Reason, "member c was lost") {
		t.Fatalf("restart %v, want it to name c", r)
	}
}

func TestGroupsPerNamespaceAreCapped(t *testing.T) {
	cfg := testcoord.Config(t)
	cfg.MaxGroupsPerNamespace = 2
	co := testcoord.Start(t, cfg)
	c := testcoord.Client(t, co.Addr())
	for i, name := range []string{"a", "b", "c"} {
		_, err := c.Join(context.Background(), &musterv1.JoinRequest{Group: ref(name), MemberId: "m0", Address: "127.0.0.2", Size: 2, Generation: -1})
		if i < 2 && err != nil {
			t.Fatalf("group %s: %v", name, err)
		}
		if i == 2 {
			st := status.Convert(err)
			if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "--max-groups-per-namespace") {
				t.Fatalf("third group: %v, want ResourceExhausted naming --max-groups-per-namespace", err)
			}
		}
	}
	// Another namespace has a cap of its own.
	if _, err := c.Join(context.Background(), &musterv1.JoinRequest{Group: &musterv1.GroupRef{Namespace: "other", Name: "c"}, MemberId: "m0", Address: "127.0.0.2", Size: 2, Generation: -1}); err != nil {
		t.Fatalf("a group of another namespace: %v", err)
	}
}

// TestWorkloadMadeAgainStartsAfresh: when every member of a group has
// left and a fresh member joins (a workload deleted and created again
// under the same name), the group starts over at generation 0, with the
// newcomer's size: not at the old group's generation, nor refused for
// the old size.
func TestWorkloadMadeAgainStartsAfresh(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	c := testcoord.Client(t, co.Addr())
	a := newMember(t, c, "again", "a", "127.0.0.2", 2, ord(0))
	b := newMember(t, c, "again", "b", "127.0.0.3", 2, ord(1))
	a.join(-1)
	b.join(-1)
	leave := func(id string) {
		t.Helper()
		if _, err := c.Leave(context.Background(), &musterv1.LeaveRequest{Group: ref("again"), MemberId: id}); err != nil {
			t.Fatalf("leave %s: %v", id, err)
		}
	}
	// a leaves: the group restarts to generation 1 without it; then b.
	leave("a")
	leave("b")
	g, err := c.GetGroup(context.Background(), &musterv1.GetGroupRequest{Group: ref("again")})
	if err != nil || g.GetGeneration() < 1 {
		t.Fatalf("after a member left: generation %d, %v; want a restart", g.GetGeneration(), err)
	}
	// The workload again, with 3 pods this time.
	resp := newMember(t, c, "again", "a2", "127.0.0.4", 3, ord(0)).join(-1)
	if resp.GetGeneration() != 0 || resp.GetSize() != 3 {
		t.Errorf("fresh join after everyone left: generation %d, size %d; want 0 and 3", resp.GetGeneration(), resp.GetSize())
	}
	// With a member attached, the size is the group's again.
	if _, err := c.Join(context.Background(), &musterv1.JoinRequest{Group: ref("again"), MemberId: "odd", Address: "127.0.0.5", Size: 2, Generation: -1}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a member with another size while one is attached: %v, want InvalidArgument", err)
	}
}

// gossipPorts returns a port on 127.0.0.3 where something listens (a live
// agent's gossip port) until the test ends, and one on 127.0.0.4 where
// nothing does (a dead agent's).
func gossipPorts(t *testing.T) (alive, dead int) {
	t.Helper()
	a, err := net.Listen("tcp", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	d, err := net.Listen("tcp", "127.0.0.4:0")
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	return a.Addr().(*net.TCPAddr).Port, d.Addr().(*net.TCPAddr).Port
}

// gossipGroup makes a running group of len(ports) members on 127.0.0.2..,
// member i announcing gossip port ports[i], each watching.
func gossipGroup(t *testing.T, c musterv1.RendezvousClient, name string, ports []int) []*member {
	t.Helper()
	n := int32(len(ports))
	var ms []*member
	for i, p := range ports {
		m := newMember(t, c, name, fmt.Sprintf("m%d", i), fmt.Sprintf("127.0.0.%d", i+2), n, ord(int64(i)))
		if _, err := c.Join(context.Background(), &musterv1.JoinRequest{Group: ref(name), MemberId: m.id, Address: m.addr, Ordinal: m.ordin, Size: n, Generation: -1, GossipPort: int32(p)}); err != nil {
			t.Fatal(err)
		}
		m.watch()
		ms = append(ms, m)
	}
	return ms
}

func TestAssignmentNamesAFewGossipSeedsLeaderFirst(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	c := testcoord.Client(t, co.Addr())
	ports := []int{7000, 7001, 7002, 7003, 7004, 7005}
	ms := gossipGroup(t, c, "seeds", ports)
	addr := func(i int) string { return fmt.Sprintf("127.0.0.%d:%d", i+2, ports[i]) }
	for i, m := range ms {
		as := m.assignment()
		seeds := as.GetGossipSeeds()
		var want []string
		if i != 0 {
			want = append(want, addr(0))
		}
		// Then the ranks after the member's own, wrapping past the last.
		for r := i + 1; len(want) < 3; r++ {
			j := 1 + (r-1)%(len(ms)-1)
			if j != i {
				want = append(want, addr(j))
			}
		}
		if !slices.Equal(seeds, want) {
			t.Errorf("member %d (rank %d): gossip seeds %v, want %v", i, as.GetRank(), seeds, want)
		}
	}
}

// TestStreamOfAKilledAgentClosingRestartsTheGroup: when a member's stream
// ends without it leaving, the coordinator dials its gossip port; nothing
// there (the agent was killed) restarts the group at once, while an agent
// that still answers (only reconnecting) restarts nothing.
func TestStreamOfAKilledAgentClosingRestartsTheGroup(t *testing.T) {
	cfg := testcoord.Config(t)
	// Longer than the test waits: a restart it sees is not the lease's.
	cfg.MemberTTL = 2 * wait
	logs := &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	co := testcoord.Start(t, cfg)
	c := testcoord.Client(t, co.Addr())
	alivePort, deadPort := gossipPorts(t)
	ms := gossipGroup(t, c, "streams", []int{0, alivePort, deadPort})
	for _, m := range ms {
		m.assignment()
	}
	// The live agent's stream ends: it is checked and found answering.
	ms[1].cancel()
	deadline := time.Now().Add(wait)
	for !strings.Contains(logs.String(), "member=m1 reporter=\"coordinator: its watch stream closed\"") {
		if time.Now().After(deadline) {
			t.Fatalf("no check of a member whose stream closed:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if g := getGroup(t, c, "streams"); g.Generation != 0 || g.Phase != musterv1.Phase_PHASE_RUNNING {
		t.Fatalf("group after a live member's stream closed: generation %d phase %v", g.Generation, g.Phase)
	}
	// The killed agent's stream ends: nothing answers, the group restarts
	// without waiting for its lease.
	killed := time.Now()
	ms[2].cancel()
	if r := ms[0].restart(); !strings.Contains(r.Reason, "member m2 was lost") {
		t.Fatalf("restart %v, want it to name m2", r)
	}
	t.Logf("stream closed -> restart in %s", time.Since(killed).Round(time.Millisecond))
}

// logBuffer collects a coordinator's log for a test to read.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
