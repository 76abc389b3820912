package rendezvous

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// A generation that ends goes to the history with the moments of its way
// to ready, when it ended, why and because of whom: a restart (its cause's
// member), an operator's restart (no member), a failure for good.
func TestHistoryRecordsEachEndedGeneration(t *testing.T) {
	now := time.UnixMilli(100_000)
	running := State{Size: 2, Generation: 3, Phase: Running, MaxRestarts: 5, Restarts: 1,
		Assignment: []string{"a", "b"}, Ranks: map[string]int{"a": 0, "b": 1},
		StartedMs: 10_000, JoinedMs: 20_000, ReleasedMs: 30_000, ReadyMs: 40_000, CreatedMs: 1_000,
		History: []Generation{{Generation: 2, StartedMs: 5_000, EndedMs: 9_000, Reason: "older", Member: "a"}}}
	exhausted := running
	exhausted.Restarts = exhausted.MaxRestarts
	ended := Generation{Generation: 3, StartedMs: 10_000, JoinedMs: 20_000, ReleasedMs: 30_000, ReadyMs: 40_000, EndedMs: 100_000}

	tests := []struct {
		name      string
		decide    func(st *State) Decision
		st        State
		wantPhase Phase
		wantGen   int64
		// want is the history entry the generation left (its Reason, Member
		// and the fields of ended).
		wantReason, wantMember string
	}{
		{
			name:      "restart after a member's failure",
			st:        running,
			decide:    func(st *State) Decision { return Restart(st, now, "b", "member b exited with code 1") },
			wantPhase: Waiting, wantGen: 4,
			wantReason: "member b exited with code 1", wantMember: "b",
		},
		{
			name:      "an operator's restart names the operator, no member",
			st:        running,
			decide:    func(st *State) Decision { return OperatorRestart(st, now, "user alice", "new weights") },
			wantPhase: Waiting, wantGen: 4,
			wantReason: "restarted by user alice: new weights",
		},
		{
			name:      "an operator's restart without a reason",
			st:        running,
			decide:    func(st *State) Decision { return OperatorRestart(st, now, "anonymous", "") },
			wantPhase: Waiting, wantGen: 4,
			wantReason: "restarted by anonymous",
		},
		{
			name:      "failure for good stays in the history",
			st:        running,
			decide:    func(st *State) Decision { return FailAt(st, now, "a", "the command was not found") },
			wantPhase: Failed, wantGen: 3,
			wantReason: "the command was not found", wantMember: "a",
		},
		{
			name:      "a spent budget fails the group at now",
			st:        exhausted,
			decide:    func(st *State) Decision { return Restart(st, now, "a", "member a was lost") },
			wantPhase: Failed, wantGen: 3,
			wantReason: "member a was lost", wantMember: "a",
		},
		{
			name: "Decide ends a generation whose member exited",
			st:   running,
			decide: func(st *State) Decision {
				d, _ := Decide(view(*st, Member{ID: "a", Generation: 3}, Member{ID: "b", Generation: 3, State: StateExited, ExitCode: 7}), now)
				return d
			},
			wantPhase: Waiting, wantGen: 4,
			wantReason: "member b (rank 1) exited with code 7", wantMember: "b",
		},
		{
			name: "Decide fails a command that cannot start at now",
			st:   running,
			decide: func(st *State) Decision {
				d, _ := Decide(view(*st, Member{ID: "a", Generation: 3, State: StateExited, ExitCode: 127}, Member{ID: "b", Generation: 3}), now)
				return d
			},
			wantPhase: Failed, wantGen: 3,
			wantReason: "member a (rank 0) exited with code 127; the command was not found", wantMember: "a",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := tc.st
			before := append([]Generation(nil), st.History...)
			d := tc.decide(&st)
			if d.Next.Phase != tc.wantPhase || d.Next.Generation != tc.wantGen {
				t.Fatalf("next = phase %s gen %d, want phase %s gen %d", d.Next.Phase, d.Next.Generation, tc.wantPhase, tc.wantGen)
			}
			if len(d.Next.History) != 2 {
				t.Fatalf("history has %d generations, want 2 (the older one and generation 3): %+v", len(d.Next.History), d.Next.History)
			}
			if !reflect.DeepEqual(d.Next.History[0], before[0]) {
				t.Errorf("older entry changed: %+v, want %+v", d.Next.History[0], before[0])
			}
			want := ended
			want.Reason, want.Member = tc.wantReason, tc.wantMember
			got := d.Next.History[1]
			if !strings.HasPrefix(got.Reason, tc.wantReason) {
				t.Errorf("reason %q does not begin with %q", got.Reason, tc.wantReason)
			}
			got.Reason = tc.wantReason
			if !reflect.DeepEqual(got, want) {
				t.Errorf("generation 3 recorded as %+v, want %+v", d.Next.History[1], want)
			}
			if d.Next.CreatedMs != 1_000 {
				t.Errorf("CreatedMs = %d, want 1000 (a group is created once)", d.Next.CreatedMs)
			}
			if !reflect.DeepEqual(st.History, before) {
				t.Errorf("the input's history changed: %+v", st.History)
			}
			if tc.wantPhase == Waiting && (d.Next.StartedMs != 100_000 || d.Next.JoinedMs != 0 || d.Next.ReleasedMs != 0 || d.Next.ReadyMs != 0) {
				t.Errorf("new generation's times: started %d joined %d released %d ready %d, want 100000 0 0 0",
					d.Next.StartedMs, d.Next.JoinedMs, d.Next.ReleasedMs, d.Next.ReadyMs)
			}
		})
	}
}

// The history keeps the newest MaxHistory generations: the state is one
// etcd value.
func TestHistoryKeepsTheNewest(t *testing.T) {
	for _, n := range []int{1, MaxHistory - 1, MaxHistory, MaxHistory + 1, 3 * MaxHistory} {
		t.Run(fmt.Sprint(n, " restarts"), func(t *testing.T) {
			st := State{Size: 1, Phase: Running, MaxRestarts: 1000, Assignment: []string{"a"}}
			now := time.UnixMilli(1_000)
			for i := range n {
				st = Restart(&st, now.Add(time.Duration(i)*time.Second), "a", fmt.Sprint("crash ", i)).Next
				st.Phase = Running
			}
			want := min(n, MaxHistory)
			if len(st.History) != want {
				t.Fatalf("after %d restarts the history has %d generations, want %d", n, len(st.History), want)
			}
			for i, g := range st.History {
				gen := int64(n - want + i) // oldest first, the newest last
				if g.Generation != gen || g.Reason != fmt.Sprint("crash ", gen) || g.EndedMs != now.Add(time.Duration(gen)*time.Second).UnixMilli() {
					t.Errorf("history[%d] = %+v, want generation %d ended by crash %d", i, g, gen, gen)
				}
			}
			if cap(st.History) > 2*MaxHistory {
				t.Errorf("history's backing array holds %d entries: the dropped ones are kept", cap(st.History))
			}
		})
	}
}

// An operator's restart begins the next generation at once, whatever the
// group's restarts so far, and spends none of its budget: a group at its
// budget can still be restarted by an operator, and its next failure then
// fails it as it would have before.
func TestOperatorRestart(t *testing.T) {
	now := time.UnixMilli(500_000)
	tests := []struct {
		name                  string
		restarts, maxRestarts int
		phase                 Phase
		restartAfterMs        int64
	}{
		{name: "fresh group", restarts: 0, maxRestarts: 3, phase: Running},
		{name: "after several restarts (a failure would back off)", restarts: 4, maxRestarts: 10, phase: Running},
		{name: "at its budget", restarts: 3, maxRestarts: 3, phase: Running},
		{name: "waiting out a backoff", restarts: 5, maxRestarts: 10, phase: Waiting, restartAfterMs: now.Add(8 * time.Second).UnixMilli()},
		{name: "no budget at all", restarts: 0, maxRestarts: 0, phase: Running},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := State{Size: 2, Generation: 7, Phase: tc.phase, Restarts: tc.restarts, MaxRestarts: tc.maxRestarts, RestartAfterMs: tc.restartAfterMs,
				Assignment: []string{"a", "b"}, Ranks: map[string]int{"a": 0, "b": 1}, LeaderAddress: "10.0.0.1", MasterPort: 29500}
			d := OperatorRestart(&st, now, "user alice", "new weights")
			n := d.Next
			if n.Phase != Waiting || n.Generation != 8 {
				t.Fatalf("next = phase %s gen %d, want Waiting gen 8", n.Phase, n.Generation)
			}
			if n.RestartAfterMs != 0 {
				t.Errorf("RestartAfterMs = %d, want 0 (an operator's restart does not back off)", n.RestartAfterMs)
			}
			if n.Restarts != tc.restarts+1 || n.MaxRestarts-n.Restarts != tc.maxRestarts-tc.restarts {
				t.Errorf("restarts %d/%d, want %d/%d (counted, but the budget left unchanged)", n.Restarts, n.MaxRestarts, tc.restarts+1, tc.maxRestarts+1)
			}
			if n.Assignment != nil || n.LeaderAddress != "" || n.MasterPort != 0 || !reflect.DeepEqual(n.Ranks, st.Ranks) {
				t.Errorf("next %+v: want no assignment nor leader, ranks kept %v", n, st.Ranks)
			}
			if !strings.Contains(d.Reason, "generation 8") || !strings.Contains(d.Reason, "restarted by user alice: new weights") {
				t.Errorf("reason %q, want the generation, who and why", d.Reason)
			}
			if n.LastError != "restarted by user alice: new weights" || n.LastErrorMember != "" {
				t.Errorf("last error %q (member %q), want the operator's restart and no member", n.LastError, n.LastErrorMember)
			}
			// Everyone joins: released at once.
			v := view(n, Member{ID: "a", Generation: 8, Address: "10.0.0.1"}, Member{ID: "b", Generation: 8})
			r, ok := Decide(v, now)
			if !ok || r.Next.Phase != Running {
				t.Fatalf("not released at once after an operator's restart: %v %+v", ok, r)
			}
			// The next failure: restarted while the budget lasts, failed
			// once it is spent, as without the operator's restart.
			failed := view(r.Next, Member{ID: "a", Generation: 8, State: StateExited, ExitCode: 1}, Member{ID: "b", Generation: 8})
			f, ok := Decide(failed, now.Add(time.Minute))
			without, _ := Decide(view(State{Size: 2, Generation: 7, Phase: Running, Restarts: tc.restarts, MaxRestarts: tc.maxRestarts,
				Assignment: []string{"a", "b"}, Ranks: map[string]int{"a": 0, "b": 1}},
				Member{ID: "a", Generation: 7, State: StateExited, ExitCode: 1}, Member{ID: "b", Generation: 7}), now.Add(time.Minute))
			if !ok || f.Next.Phase != without.Next.Phase {
				t.Fatalf("next failure after an operator's restart: %v phase %s, want phase %s as without it", ok, f.Next.Phase, without.Next.Phase)
			}
			if f.Next.Phase == Failed && (f.Next.FailedMember != "a" || !strings.Contains(f.Next.FirstError, "exited with code 1")) {
				t.Errorf("failed group's cause: %q (member %q), want member a's exit, not the operator's restart", f.Next.FirstError, f.Next.FailedMember)
			}
		})
	}
}
