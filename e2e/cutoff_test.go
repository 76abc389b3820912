package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testNet is a small network of the test's own: a bridge in the host
// namespace (10.245.0.1/24) and one network namespace per member, each
// joined to the bridge by a veth pair. Every address lives on this machine,
// inside namespaces the test creates and removes.
type testNet struct {
	t      *testing.T
	ip     string
	bridge string
	ns     []string
	hostIf []string
}

func newTestNet(t *testing.T, members, seq int) *testNet {
	t.Helper()
	ipCmd, err := exec.LookPath("ip")
	if err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("cutting a member off needs root and iproute2 (%v)", err)
		}
		t.Skip("cutting a member off needs root and iproute2")
	}
	id := fmt.Sprintf("%03x%02x", os.Getpid()&0xfff, seq&0xff)
	n := &testNet{t: t, ip: ipCmd, bridge: "mbr" + id}
	t.Cleanup(n.teardown)
	n.run("link", "add", n.bridge, "type", "bridge")
	n.run("addr", "add", "10.245.0.1/24", "dev", n.bridge)
	n.run("link", "set", n.bridge, "up")
	for i := 0; i < members; i++ {
		ns, h, p := fmt.Sprintf("mcut%s-%d", id, i), fmt.Sprintf("mh%s%d", id, i), fmt.Sprintf("mp%s%d", id, i)
		n.ns, n.hostIf = append(n.ns, ns), append(n.hostIf, h)
		n.run("netns", "add", ns)
		n.run("link", "add", h, "type", "veth", "peer", "name", p)
		n.run("link", "set", p, "netns", ns)
		n.run("link", "set", h, "master", n.bridge)
		n.run("link", "set", h, "up")
		n.run("-n", ns, "addr", "add", n.addr(i)+"/24", "dev", p)
		n.run("-n", ns, "link", "set", p, "up")
		n.run("-n", ns, "link", "set", "lo", "up")
	}
	return n
}

func (n *testNet) addr(i int) string { return fmt.Sprintf("10.245.0.%d", i+2) }

func (n *testNet) run(args ...string) {
	n.t.Helper()
	if out, err := exec.Command(n.ip, args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// cut takes member i off the network: its link goes down.
func (n *testNet) cut(i int) { n.run("link", "set", n.hostIf[i], "down") }

func (n *testNet) teardown() {
	// The host ends go first: a cut-off member's sockets can keep its
	// namespace alive for minutes after it is deleted (their FINs cannot
	// leave), and with it the veth pair, unless the pair is removed here.
	for _, h := range n.hostIf {
		exec.Command(n.ip, "link", "del", h).Run()
	}
	for _, ns := range n.ns {
		exec.Command(n.ip, "netns", "del", ns).Run()
	}
	exec.Command(n.ip, "link", "del", n.bridge).Run()
}

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
		net := newTestNet(t, n, trial)
		// The coordinator serves the test's own network namespaces, not
		// loopback; nothing else reaches that network, so it takes the
		// agents at their word (--insecure) rather than measuring TLS here.
		coord := startCoordinatorOn(t, "10.245.0.1", "--insecure")
		agentBin := filepath.Join(bins(t), "agent")
		var ps []*proc
		for i := 0; i < n; i++ {
			ps = append(ps, start(t, net.ip, "netns", "exec", net.ns[i], agentBin, "run", "--coordinator", coord,
				"--group", fmt.Sprintf("cut-%d", trial), "--size", fmt.Sprint(n), "--member-id", fmt.Sprintf("m%d", i),
				"--address", net.addr(i), "--ordinal", fmt.Sprint(i), "--", "sleep", "600"))
		}
		for _, p := range ps {
			p.waitOutput(t, "gossip: joined peers", 30*time.Second)
		}
		victim := trial % n
		cut := time.Now()
		net.cut(victim)
		took = append(took, waitSurvivorsTold(t, ps, victim, cut, 30*time.Second))
		for _, p := range ps {
			p.cmd.Process.Kill()
			<-p.done
		}
		net.teardown()
	}
	median, worst := medianWorst(took)
	t.Logf("one member of 4 cut off -> every other member told to restart: median %s, worst %s over %d trials",
		median.Round(time.Millisecond), worst.Round(time.Millisecond), trials)
}
