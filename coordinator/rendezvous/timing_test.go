package rendezvous

import (
	"strings"
	"testing"
	"time"
)

// The moments of a generation's way to ready are written with the
// transitions that mark them: the release records when the last member
// joined and when it released, the first time every rank is ready is a
// transition of its own (once), and a restart begins a new generation.
func TestTransitionsRecordTheWayToReady(t *testing.T) {
	now := time.UnixMilli(50_000)
	st := State{Size: 2, Phase: Waiting, MaxRestarts: 3, StartedMs: 10_000}
	v := view(st, Member{ID: "a", JoinedMs: 12_000}, Member{ID: "b", JoinedMs: 20_000})
	d, ok := Decide(v, now)
	if !ok || d.Next.Phase != Running {
		t.Fatalf("release: %v %+v", ok, d)
	}
	if d.Next.StartedMs != 10_000 || d.Next.JoinedMs != 20_000 || d.Next.ReleasedMs != 50_000 || d.Next.ReadyMs != 0 {
		t.Fatalf("released: started %d joined %d released %d ready %d, want 10000 20000 50000 0", d.Next.StartedMs, d.Next.JoinedMs, d.Next.ReleasedMs, d.Next.ReadyMs)
	}

	running := d.Next
	v = view(running, Member{ID: "a", State: StateReady}, Member{ID: "b", State: StateLaunching})
	if d, ok := Decide(v, now.Add(time.Second)); ok {
		t.Fatalf("one of two ranks ready: decided %+v", d)
	}
	v = view(running, Member{ID: "a", State: StateReady}, Member{ID: "b", State: StateReady})
	d, ok = Decide(v, now.Add(40*time.Second))
	if !ok || d.Next.Phase != Running || d.Next.ReadyMs != 90_000 || !strings.Contains(d.Reason, "1m20s after it began") {
		t.Fatalf("all ready: %v %+v, want ready at 90000, 1m20s after it began", ok, d)
	}
	v = view(d.Next, Member{ID: "a", State: StateReady}, Member{ID: "b", State: StateReady})
	if d, ok := Decide(v, now.Add(time.Minute)); ok {
		t.Fatalf("ready recorded twice: %+v", d)
	}

	r := Restart(&d.Next, now.Add(2*time.Minute), "b", "exited 1")
	if r.Next.StartedMs != 170_000 || r.Next.JoinedMs != 0 || r.Next.ReleasedMs != 0 || r.Next.ReadyMs != 0 {
		t.Fatalf("restarted: started %d joined %d released %d ready %d, want 170000 0 0 0", r.Next.StartedMs, r.Next.JoinedMs, r.Next.ReleasedMs, r.Next.ReadyMs)
	}
}

// A member record without a join time (written by an older coordinator)
// leaves the generation's join time unknown rather than wrong.
func TestReleaseWithoutJoinTimes(t *testing.T) {
	v := view(State{Size: 2, Phase: Waiting}, Member{ID: "a", JoinedMs: 12_000}, Member{ID: "b"})
	d, ok := Decide(v, time.UnixMilli(50_000))
	if !ok || d.Next.JoinedMs != 0 || d.Next.ReleasedMs != 50_000 {
		t.Fatalf("release: %v joined %d released %d, want joined 0 (unknown), released 50000", ok, d.Next.JoinedMs, d.Next.ReleasedMs)
	}
}
