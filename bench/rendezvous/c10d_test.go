package rendezvous

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/muster-dev/muster/bench/report"
)

// BenchmarkVersusC10d compares, for N processes on loopback, muster
// (bin/coordinator already serving, N bin/agent processes) with PyTorch's
// own c10d dynamic rendezvous (torch 1.13, min = max = N):
//
//   - rendezvous: from the start of the last participant to every
//     participant holding its rank, each participant printing its own
//     wall-clock time when it has it (the agent's "barrier released" log
//     line; next_rendezvous() returning in the c10d participant).
//   - launch: from starting N launchers to all of them exited 0, each
//     running the same trivial Python program (testdata/rank.py): N
//     `agent run` against N `torchrun --nnodes N` (c10d rendezvous).
func BenchmarkVersusC10d(b *testing.B) {
	py := TorchPython(b)
	coord := Coordinator(b)
	// torchrun imports torch in every launcher (about 0.7s of CPU each, all
	// at once): its launches get fewer repetitions to stay in budget.
	for _, c := range []struct{ n, reps, launchReps int }{{4, 5, 3}, {16, 5, 3}, {64, 3, 1}} {
		b.Run(fmt.Sprintf("N=%d", c.n), func(b *testing.B) {
			var ours, theirs, oursLaunch, theirsLaunch []float64
			incomplete := 0
			for rep := 0; rep < c.reps; rep++ {
				// Interleaved, so that load from elsewhere on the machine
				// falls on both alike.
				// After a group that never completed, later ones are not
				// waited for: each would cost 30s of the budget.
				rdzv, launch := musterRun(b, coord, py, c.n, fmt.Sprintf("rdzv-%d-%d", c.n, rep), incomplete == 0, nil)
				ours = append(ours, ms(rdzv))
				if launch < 0 {
					incomplete++
				} else {
					oursLaunch = append(oursLaunch, ms(launch))
				}
				theirs = append(theirs, ms(c10dRendezvous(b, py, c.n)))
				if rep < c.launchReps {
					theirsLaunch = append(theirsLaunch, ms(torchrunLaunch(b, py, c.n)))
				}
			}
			o, t := report.Summarize(ours), report.Summarize(theirs)
			report.Add(b, report.Row{
				Name: fmt.Sprintf("rendezvous N=%d: last start to every rank held", c.n), Unit: "ms", Better: report.Lower,
				Ours: o.Median, Anchor: "torch-c10d", AnchorValue: t.Median,
				OursSpread: o.Spread("ms"), AnchorSpread: t.Spread("ms"),
				Params: fmt.Sprintf("N=%d processes on loopback, %d repetitions (median); muster: coordinator serving, N bin/agent; torch 1.13 c10d dynamic rendezvous, min=max=N, one participant hosts the TCPStore", c.n, c.reps),
				Note: "from the last participant's start (muster: just before its agent is exec'd; c10d: its own first print, torch already imported in a forked child) " +
					"to the last participant holding its rank, by each process's wall clock (agent log: ms resolution); c10d polls its store state once a second while it waits",
			})
			o, t = report.Summarize(oursLaunch), report.Summarize(theirsLaunch)
			note := "torchrun at its fastest monitor interval (0.1s; its default 5s adds up to 5s); each torchrun imports torch (~0.7s CPU), `agent run` is a Go binary; muster's coordinator start is not counted (a service, like an etcd)"
			if incomplete > 0 {
				note = fmt.Sprintf("LOSS: %d of %d muster groups were released but did not complete within 30s (not counted; after the first, later groups were not waited for); "+
					"e2e's TestSixtyFourAgentsCompleteOnABusyHost holds the same case; ", incomplete, c.reps) + note
			}
			report.Add(b, report.Row{
				Name: fmt.Sprintf("launch N=%d: start launchers to all exited 0", c.n), Unit: "ms", Better: report.Lower,
				Ours: o.Median, Anchor: "torch-c10d", AnchorValue: t.Median,
				OursSpread: o.Spread("ms"), AnchorSpread: t.Spread("ms"),
				Params: fmt.Sprintf("N=%d launchers on loopback, each running testdata/rank.py with %s; muster: N `agent run` (coordinator already serving), %d repetitions; torch: N `torchrun --nnodes %d --nproc_per_node 1 --rdzv_backend c10d --monitor_interval 0.1`, %d repetitions; medians", c.n, py, c.reps, c.n, c.launchReps),
				Note:   note,
			})
		})
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// musterRun runs one group of n agents launching testdata/rank.py and
// returns the time from the last agent's start to every agent holding its
// rank, and from the first agent's start to every agent exited 0; launch is
// negative when the group did not complete within 30s of being released,
// or was not waited for (waitExit false); the agents are then killed.
// memberArgs, when not nil, adds member m<i>'s own agent flags (its
// certificate).
func musterRun(b *testing.B, coord, py string, n int, group string, waitExit bool, memberArgs func(i int) []string) (rendezvous, launch time.Duration) {
	b.Helper()
	args := func(i int) []string {
		a := []string{"--stop-grace", "2s"}
		if memberArgs != nil {
			a = append(a, memberArgs(i)...)
		}
		return a
	}
	ps := AgentsEach(b, coord, group, n, args, py, Testdata("rank.py"))
	defer func() {
		for _, p := range ps {
			p.Kill()
		}
	}()
	deadline := time.Now().Add(2 * time.Minute)
	var held, exited time.Time
	for i, p := range ps {
		l, _, err := p.Line(0, "barrier released", deadline)
		if err != nil {
			b.Fatal(err)
		}
		if !strings.Contains(l, fmt.Sprintf(" rank=%d ", i)) {
			b.Fatalf("agent %d was not given rank %d: %s", i, i, l)
		}
		t, err := SlogTime(l)
		if err != nil {
			b.Fatal(err)
		}
		held = later(held, t)
	}
	rendezvous = held.Sub(ps[n-1].Started)
	if !waitExit {
		return rendezvous, -1
	}
	deadline = time.Now().Add(30 * time.Second)
	for i, p := range ps {
		code, err := p.WaitExit(deadline)
		if err != nil {
			b.Logf("group %s released but not completed within 30s: agent %d still runs", group, i)
			return rendezvous, -1
		}
		if code != 0 {
			b.Fatalf("agent %d exited %d:\n%s", i, code, p.Output())
		}
		t, _ := p.Exited()
		exited = later(exited, t)
	}
	return rendezvous, exited.Sub(ps[0].Started)
}

// c10dRendezvous runs n participants of torch's c10d rendezvous
// (testdata/c10d_rendezvous.py) and returns the time from the last
// participant's start to every participant holding its rank.
//
// The TCPStore's port is one the kernel gave and took back (FreeAddr), so
// another process may bind it first; c10d then fails to listen ("Address
// already in use") and every participant times out after 60s. That run is
// tried again on a new port, up to three times.
func c10dRendezvous(b *testing.B, py string, n int) time.Duration {
	b.Helper()
	for attempt := 1; ; attempt++ {
		d, err := c10dAttempt(b, py, n)
		if err == nil {
			return d
		}
		if !errors.Is(err, errPortTaken) || attempt == 3 {
			b.Fatal(err)
		}
		b.Logf("c10d rendezvous, attempt %d of 3: %v; again on a new port", attempt, err)
	}
}

var errPortTaken = errors.New("the TCPStore's port was taken by another process")

func c10dAttempt(b *testing.B, py string, n int) (time.Duration, error) {
	b.Helper()
	p := Start(b, nil, py, Testdata("c10d_rendezvous.py"), strconv.Itoa(n), FreeAddr(b, "127.0.0.1"), fmt.Sprintf("c10d-%d", time.Now().UnixNano()))
	defer p.Kill()
	deadline := time.Now().Add(2 * time.Minute)
	var started, held time.Time
	var ranks []int
	from := 0
	for len(ranks) < n {
		l, i, err := p.Line(from, "rank ", deadline)
		if err != nil {
			if strings.Contains(p.Output(), "Address already in use") {
				return 0, fmt.Errorf("%w: %v", errPortTaken, err)
			}
			return 0, err
		}
		from = i + 1
		var r, world int
		if _, err := fmt.Sscanf(l, "rank %d %d", &r, &world); err != nil || world != n {
			b.Fatalf("c10d participant printed %q, want rank R %d NS", l, n)
		}
		t, err := UnixField(l, 3)
		if err != nil {
			b.Fatal(err)
		}
		held, ranks = later(held, t), append(ranks, r)
	}
	sort.Ints(ranks)
	for i, r := range ranks {
		if r != i {
			b.Fatalf("c10d handed out ranks %v, want 0..%d once each", ranks, n-1)
		}
	}
	for _, l := range strings.Split(p.Output(), "\n") {
		if strings.HasPrefix(l, "start ") {
			t, err := UnixField(l, 1)
			if err != nil {
				b.Fatal(err)
			}
			started = later(started, t)
		}
	}
	return held.Sub(started), nil
}

// torchrunLaunch starts n torchrun launchers (c10d rendezvous, one worker
// each running testdata/rank.py) and returns the time until all exited 0.
func torchrunLaunch(b *testing.B, py string, n int) time.Duration {
	b.Helper()
	endpoint := FreeAddr(b, "127.0.0.1")
	id := fmt.Sprintf("launch-%d", time.Now().UnixNano())
	ps := make([]*Proc, n)
	for i := range ps {
		// One launcher hosts the store, as on the host named by the
		// endpoint; the others connect (they would otherwise all try).
		ps[i] = Start(b, nil, py, Testdata("torchrun.py"), "--nnodes", strconv.Itoa(n), "--nproc_per_node", "1",
			"--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", id, "--rdzv_conf", fmt.Sprintf("is_host=%d", boolInt(i == 0)),
			"--monitor_interval", "0.1", Testdata("rank.py"))
	}
	deadline := time.Now().Add(3 * time.Minute)
	var exited time.Time
	for i, p := range ps {
		code, err := p.WaitExit(deadline)
		if err != nil {
			b.Fatal(err)
		}
		if code != 0 {
			b.Fatalf("torchrun %d exited %d:\n%s", i, code, p.Output())
		}
		t, _ := p.Exited()
		exited = later(exited, t)
	}
	return exited.Sub(ps[0].Started)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func boolInt(v bool) int {
	if v {
		return 1
	}
	return 0
}
