package rendezvous

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/muster-dev/muster/podapi"
)

func ord(v int64) *int64 { return &v }

func TestAssignRanks(t *testing.T) {
	tests := []struct {
		name   string
		prev   map[string]int
		joined []Member
		size   int
		order  string
		want   []string
	}{
		{
			name: "ordinals in numeric order, not string order of names",
			joined: []Member{
				{ID: "w-10", Ordinal: ord(10), CreateRev: 1},
				{ID: "w-2", Ordinal: ord(2), CreateRev: 2},
				{ID: "w-1", Ordinal: ord(1), CreateRev: 3},
				{ID: "w-0", Ordinal: ord(0), CreateRev: 4},
			},
			size: 4,
			want: []string{"w-0", "w-1", "w-2", "w-10"},
		},
		{
			name: "no hints: order of arrival",
			joined: []Member{
				{ID: "c", CreateRev: 7},
				{ID: "a", CreateRev: 9},
				{ID: "b", CreateRev: 8},
			},
			size: 3,
			want: []string{"c", "b", "a"},
		},
		{
			name: "hinted members before unhinted ones",
			joined: []Member{
				{ID: "late", CreateRev: 1},
				{ID: "x", Ordinal: ord(5), CreateRev: 2},
			},
			size: 2,
			want: []string{"x", "late"},
		},
		{
			name: "earlier ranks are kept, a newcomer takes the free one",
			prev: map[string]int{"a": 2, "b": 0, "gone": 1},
			joined: []Member{
				{ID: "new", Ordinal: ord(0), CreateRev: 1},
				{ID: "a", CreateRev: 2},
				{ID: "b", CreateRev: 3},
			},
			size: 3,
			want: []string{"b", "new", "a"},
		},
		{
			name:  "topology: one domain's members get neighbouring ranks, ordinal 0 stays rank 0",
			order: RankOrderTopology,
			joined: []Member{
				{ID: "p-3", Ordinal: ord(3), Domain: "rack-a", CreateRev: 1},
				{ID: "p-1", Ordinal: ord(1), Domain: "rack-b", CreateRev: 2},
				{ID: "p-0", Ordinal: ord(0), Domain: "rack-a", CreateRev: 3},
				{ID: "p-2", Ordinal: ord(2), Domain: "rack-b", CreateRev: 4},
				{ID: "p-4", Ordinal: ord(4), Domain: "rack-c", CreateRev: 5},
				{ID: "p-5", Ordinal: ord(5), Domain: "rack-a", CreateRev: 6},
			},
			size: 6,
			want: []string{"p-0", "p-3", "p-5", "p-1", "p-2", "p-4"},
		},
		{
			name: "ordinal order ignores domains",
			joined: []Member{
				{ID: "p-1", Ordinal: ord(1), Domain: "rack-b"},
				{ID: "p-0", Ordinal: ord(0), Domain: "rack-a"},
				{ID: "p-2", Ordinal: ord(2), Domain: "rack-a"},
			},
			size: 3,
			want: []string{"p-0", "p-1", "p-2"},
		},
		{
			name:  "topology: kept ranks stay, newcomers are grouped by domain, rank 0's first",
			order: RankOrderTopology,
			prev:  map[string]int{"p-0": 0},
			joined: []Member{
				{ID: "p-0", Ordinal: ord(0), Domain: "rack-a"},
				{ID: "p-1", Ordinal: ord(1), Domain: "rack-b"},
				{ID: "p-2", Ordinal: ord(2), Domain: "rack-a"},
				{ID: "p-3", Ordinal: ord(3), Domain: "rack-b"},
			},
			size: 4,
			want: []string{"p-0", "p-2", "p-1", "p-3"},
		},
		{
			name: "extra members are left out",
			joined: []Member{
				{ID: "a", CreateRev: 1}, {ID: "b", CreateRev: 2}, {ID: "c", CreateRev: 3},
			},
			size: 2,
			want: []string{"a", "b"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := AssignRanks(tc.prev, tc.joined, tc.size, tc.order)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("AssignRanks = %v, want %v", got, tc.want)
			}
		})
	}
}

func view(st State, members ...Member) *View {
	v := &View{Key: podapi.Key{Namespace: "default", Name: "g"}, State: &st, Members: map[string]Member{}}
	for _, m := range members {
		v.Members[m.ID] = m
	}
	return v
}

func TestDecide(t *testing.T) {
	running := State{Size: 2, Generation: 3, Phase: Running, MaxRestarts: 5, Restarts: 1,
		Assignment: []string{"a", "b"}, Ranks: map[string]int{"a": 0, "b": 1}}
	exhausted := running
	exhausted.Restarts = 5

	tests := []struct {
		name      string
		v         *View
		wantOK    bool
		wantPhase Phase
		wantGen   int64
		wantWhy   string
	}{
		{
			name:   "waiting with one of two joined: nothing",
			v:      view(State{Size: 2, Phase: Waiting}, Member{ID: "a"}),
			wantOK: false,
		},
		{
			name:      "waiting with all joined: release",
			v:         view(State{Size: 2, Phase: Waiting}, Member{ID: "a", Address: "10.0.0.1", MasterPort: 29500}, Member{ID: "b"}),
			wantOK:    true,
			wantPhase: Running,
			wantWhy:   "barrier released",
		},
		{
			name:   "joined an older generation does not count",
			v:      view(State{Size: 2, Generation: 1, Phase: Waiting}, Member{ID: "a", Generation: 1}, Member{ID: "b", Generation: 0}),
			wantOK: false,
		},
		{
			name:      "non-zero exit restarts to the next generation",
			v:         view(running, Member{ID: "a", Generation: 3}, Member{ID: "b", Generation: 3, State: StateExited, ExitCode: 7}),
			wantOK:    true,
			wantPhase: Waiting,
			wantGen:   4,
			wantWhy:   "member b (rank 1) exited with code 7",
		},
		{
			name:      "a command that cannot start fails the group at once",
			v:         view(running, Member{ID: "a", Generation: 3}, Member{ID: "b", Generation: 3, State: StateExited, ExitCode: 127, Reason: `exec: "vllm": executable file not found in $PATH`}),
			wantOK:    true,
			wantPhase: Failed,
			wantGen:   3,
			wantWhy:   `member b (rank 1) exited with code 127: exec: "vllm": executable file not found in $PATH; the command was not found: fix the command or the image (not restarting)`,
		},
		{
			name:      "lost member restarts",
			v:         view(running, Member{ID: "a", Generation: 3}),
			wantOK:    true,
			wantPhase: Waiting,
			wantGen:   4,
			wantWhy:   "member b was lost",
		},
		{
			name:      "all exited 0 completes",
			v:         view(running, Member{ID: "a", Generation: 3, State: StateExited}, Member{ID: "b", Generation: 3, State: StateExited}),
			wantOK:    true,
			wantPhase: Completed,
			wantGen:   3,
		},
		{
			name:      "restart budget spent fails and keeps the cause",
			v:         view(exhausted, Member{ID: "a", Generation: 3, State: StateExited, ExitCode: 1}, Member{ID: "b", Generation: 3}),
			wantOK:    true,
			wantPhase: Failed,
			wantGen:   3,
			wantWhy:   "member a (rank 0) exited with code 1",
		},
		{
			name:   "terminal groups do not move",
			v:      view(State{Size: 1, Phase: Completed}),
			wantOK: false,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, ok := Decide(tc.v, time.Unix(1000, 0))
			if ok != tc.wantOK {
				t.Fatalf("Decide ok = %v, want %v (decision %+v)", ok, tc.wantOK, d)
			}
			if !ok {
				return
			}
			if d.Next.Phase != tc.wantPhase || d.Next.Generation != tc.wantGen {
				t.Fatalf("next = phase %s gen %d, want phase %s gen %d", d.Next.Phase, d.Next.Generation, tc.wantPhase, tc.wantGen)
			}
			if !strings.Contains(d.Reason, tc.wantWhy) {
				t.Fatalf("reason %q does not contain %q", d.Reason, tc.wantWhy)
			}
		})
	}
}

func TestReleaseSetsLeaderAndKeepsRanks(t *testing.T) {
	v := view(State{Size: 2, Phase: Waiting, Generation: 2, Ranks: map[string]int{"b": 0, "a": 1}},
		Member{ID: "a", Generation: 2, Address: "127.0.0.3", MasterPort: 1111},
		Member{ID: "b", Generation: 2, Address: "127.0.0.2", MasterPort: 2222})
	d, ok := Decide(v, time.Unix(1000, 0))
	if !ok {
		t.Fatal("no decision")
	}
	if got := d.Next.Assignment; !reflect.DeepEqual(got, []string{"b", "a"}) {
		t.Fatalf("assignment %v, want [b a]", got)
	}
	if d.Next.LeaderAddress != "127.0.0.2" || d.Next.MasterPort != 2222 {
		t.Fatalf("leader %s:%d, want 127.0.0.2:2222", d.Next.LeaderAddress, d.Next.MasterPort)
	}
	if v.State.Assignment != nil {
		t.Fatal("Decide modified its input")
	}
}

func TestFailedKeepsFirstError(t *testing.T) {
	st := State{Size: 1, Phase: Running, MaxRestarts: 0, FirstError: "", Assignment: []string{"a"}}
	d := Restart(&st, time.Unix(1000, 0), "a", "first")
	if d.Next.Phase != Failed || d.Next.FirstError != "first" || d.Next.FailedMember != "a" {
		t.Fatalf("got %+v", d.Next)
	}
	d2 := Restart(&d.Next, time.Unix(1000, 0), "b", "second")
	if d2.Next.FirstError != "first" {
		t.Fatalf("first error overwritten: %q", d2.Next.FirstError)
	}
}

func TestRestartBacksOffAfterTheFirst(t *testing.T) {
	want := []time.Duration{0, 0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for n, w := range want {
		if got := RestartBackoff(n); got != w {
			t.Errorf("RestartBackoff(%d) = %s, want %s", n, got, w)
		}
	}
	now := time.Unix(1000, 0)
	st := State{Size: 1, Phase: Running, MaxRestarts: 10, Restarts: 1, Generation: 1, Assignment: []string{"a"}}
	d := Restart(&st, now, "a", "crashed again")
	if d.Next.Restarts != 2 || d.Next.RestartAfterMs != now.Add(time.Second).UnixMilli() || !strings.Contains(d.Reason, "1s backoff") {
		t.Fatalf("second restart: %+v (%s), want a 1s backoff", d.Next, d.Reason)
	}
	// Everyone has joined, but the barrier holds until the backoff ends.
	v := view(d.Next, Member{ID: "a", Generation: 2})
	if _, ok := Decide(v, now.Add(500*time.Millisecond)); ok {
		t.Fatal("released during the backoff")
	}
	if at := ReleaseAt(v, now.Add(500*time.Millisecond)); !at.Equal(now.Add(time.Second)) {
		t.Fatalf("ReleaseAt = %v, want %v", at, now.Add(time.Second))
	}
	if d, ok := Decide(v, now.Add(time.Second)); !ok || d.Next.Phase != Running {
		t.Fatalf("not released once the backoff ended: %v %+v", ok, d)
	}
	// The first restart is immediate.
	first := Restart(&State{Size: 1, Phase: Running, MaxRestarts: 10, Assignment: []string{"a"}}, now, "a", "x")
	if first.Next.RestartAfterMs != 0 {
		t.Fatalf("first restart waits until %d", first.Next.RestartAfterMs)
	}
}

// TestJoinedCount holds the per-generation index against a plain count
// through every way a view changes: SetMember (new, moved generation,
// same generation), DeleteMember (known, unknown), and Members written
// directly (the index is stale then and must not be trusted).
func TestJoinedCount(t *testing.T) {
	v := &View{}
	check := func(step string) {
		t.Helper()
		for gen := int64(0); gen < 3; gen++ {
			want := 0
			for _, m := range v.Members {
				if m.Generation == gen {
					want++
				}
			}
			if got := v.JoinedCount(gen); got != want {
				t.Fatalf("%s: JoinedCount(%d) = %d, want %d", step, gen, got, want)
			}
			if got := len(v.Joined(gen)); got != want {
				t.Fatalf("%s: len(Joined(%d)) = %d, want %d", step, gen, got, want)
			}
		}
	}
	check("empty")
	v.SetMember(Member{ID: "a"})
	v.SetMember(Member{ID: "b"})
	v.SetMember(Member{ID: "c", Generation: 1})
	check("three set")
	v.SetMember(Member{ID: "a", Generation: 1})
	check("a moved to generation 1")
	v.SetMember(Member{ID: "a", Generation: 1, State: StateReady})
	check("a updated in its generation")
	v.DeleteMember("b")
	v.DeleteMember("nobody")
	check("b deleted, unknown deleted")
	v.Members["d"] = Member{ID: "d", Generation: 2}
	check("d written directly")
	v.SetMember(Member{ID: "e", Generation: 2})
	check("e set after a direct write")
}
