package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/muster-dev/muster/internal/testnet"
)

// TestCutOffMemberIsDetected cuts one member of four off the network (its
// link goes down; agent and runtime keep running) and measures until every
// other member is told to restart.
func TestCutOffMemberIsDetected(t *testing.T) {
	trials := 3
	if v, err := strconv.Atoi(os.Getenv("MUSTER_FAULT_TRIALS")); err == nil && v > 0 {
		trials = v
	}
	var took []time.Duration
	for trial := 0; trial < trials; trial++ {
		const n = 4
		if err := testnet.Available(); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatal(err)
			}
			t.Skip(err)
		}
		net := testnet.New(t, n, trial)
		// The coordinator serves the test's own network namespaces, not
		// loopback; nothing else reaches that network, so it takes the
		// agents at their word (--insecure) rather than measuring TLS here.
		coord := startCoordinatorOn(t, testnet.HostAddr, "--insecure")
		agentBin := filepath.Join(bins(t), "agent")
		var ps []*proc
		for i := 0; i < n; i++ {
			ip, args := net.Command(i, agentBin, "run", "--coordinator", coord,
				"--group", fmt.Sprintf("cut-%d", trial), "--size", fmt.Sprint(n), "--member-id", fmt.Sprintf("m%d", i),
				"--address", net.Addr(i), "--ordinal", fmt.Sprint(i), "--", "sleep", "600")
			ps = append(ps, start(t, ip, args...))
		}
		for _, p := range ps {
			p.waitOutput(t, "gossip: joined peers", 30*time.Second)
		}
		victim := trial % n
		cut := time.Now()
		net.Cut(victim)
		took = append(took, waitSurvivorsTold(t, ps, victim, cut, 30*time.Second))
		for _, p := range ps {
			p.cmd.Process.Kill()
			<-p.done
		}
		net.Close()
	}
	median, worst := medianWorst(took)
	t.Logf("one member of 4 cut off -> every other member told to restart: median %s, worst %s over %d trials",
		median.Round(time.Millisecond), worst.Round(time.Millisecond), trials)
}
