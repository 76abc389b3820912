package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestKilledAgentIsNoticedBySurvivorsWithinASecond kills -9 one member's
// agent (its runtime dies with it) and measures until every survivor has
// been told to restart. Gossip between the agents finds the dead member and
// the coordinator confirms; without gossip only the member's lease would,
// after --member-ttl.
func TestKilledAgentIsNoticedBySurvivorsWithinASecond(t *testing.T) {
	measureKill(t, "agent")
}

// TestKilledRuntimeRestartsTheGroup kills -9 one rank's runtime: its agent
// reports the exit at once and every survivor is told to restart.
func TestKilledRuntimeRestartsTheGroup(t *testing.T) {
	measureKill(t, "runtime")
}

func measureKill(t *testing.T, what string) {
	trials := 5
	if v, err := strconv.Atoi(os.Getenv("MUSTER_FAULT_TRIALS")); err == nil && v > 0 {
		trials = v
	}
	coord := startCoordinator(t)
	agentBin := filepath.Join(bins(t), "agent")
	var took []time.Duration
	for trial := 0; trial < trials; trial++ {
		group := fmt.Sprintf("kill-%d", trial)
		const n = 4
		var ps []*proc
		for i := 0; i < n; i++ {
			ps = append(ps, start(t, agentBin, "run", "--coordinator", coord, "--group", group, "--size", fmt.Sprint(n),
				"--member-id", fmt.Sprintf("m%d", i), "--address", fmt.Sprintf("127.0.0.%d", i+2), "--ordinal", fmt.Sprint(i),
				"--", "sh", "-c", "echo runtime-pid=$$; exec sleep 600"))
		}
		for _, p := range ps {
			p.waitOutput(t, "runtime ready", 30*time.Second)
		}
		// Every node has met its peers before one dies.
		for _, p := range ps {
			p.waitOutput(t, "gossip: joined peers", 10*time.Second)
		}
		victim := ps[trial%n]
		pid := victim.cmd.Process.Pid
		if what == "runtime" {
			// The shell prints its pid as it starts, which may be after
			// the agent logged it ready.
			pidLine := regexp.MustCompile(`(?m)^runtime-pid=(\d+)$`)
			deadline := time.Now().Add(10 * time.Second)
			m := pidLine.FindStringSubmatch(victim.output())
			for ; m == nil; m = pidLine.FindStringSubmatch(victim.output()) {
				if time.Now().After(deadline) {
					t.Fatalf("no runtime pid in:\n%s", victim.output())
				}
				time.Sleep(10 * time.Millisecond)
			}
			pid, _ = strconv.Atoi(m[1])
		}
		killed := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		took = append(took, waitSurvivorsTold(t, ps, trial%n, killed, 20*time.Second))
		for _, p := range ps {
			if p != victim {
				p.cmd.Process.Signal(syscall.SIGKILL)
			}
		}
	}
	median, worst := medianWorst(took)
	t.Logf("kill -9 of one %s of 4 -> every survivor told to restart: median %s, worst %s over %d trials", what, median.Round(time.Millisecond), worst.Round(time.Millisecond), trials)
	if median > time.Second {
		t.Errorf("median %s: gossip should notice a dead member in well under a second", median)
	}
}

// waitSurvivorsTold waits until every member but victim has logged that the
// group is restarting, and returns the time since the fault. It polls every
// 5ms: the figures it yields are sub-second.
func waitSurvivorsTold(t *testing.T, ps []*proc, victim int, fault time.Time, within time.Duration) time.Duration {
	t.Helper()
	deadline := fault.Add(within)
	for i, p := range ps {
		if i == victim {
			continue
		}
		for !strings.Contains(p.output(), "group restarting") {
			if time.Now().After(deadline) {
				t.Fatalf("member %d not told to restart within %s of the fault to member %d:\n%s", i, within, victim, p.output())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return time.Since(fault)
}

// medianWorst sorts d and returns its median and maximum.
func medianWorst(d []time.Duration) (median, worst time.Duration) {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2], d[len(d)-1]
}
