// Package testnet builds a small network of a test's own, to cut one
// member off it: a bridge in the host namespace (HostAddr/24) and one
// network namespace per member, each joined to the bridge by a veth pair.
// Every address lives on this machine, inside namespaces the test creates
// and removes; it needs root and iproute2.
package testnet

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// HostAddr is the bridge's address: what the members reach the host (a
// coordinator listening there) by.
const HostAddr = "10.245.0.1"

// Net is one test network.
type Net struct {
	tb     testing.TB
	ip     string
	bridge string
	ns     []string
	hostIf []string
}

// Available returns why a test network cannot be built here, or nil.
func Available() error {
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("cutting a member off needs iproute2 (apt-get install -y iproute2): %w", err)
	}
	if os.Geteuid() != 0 {
		return errors.New("cutting a member off needs root (network namespaces)")
	}
	return nil
}

// New builds a network of members namespaces; seq tells apart networks
// one process builds one after another. It is torn down when tb ends, or
// earlier by Close. Only one may exist at a time on a machine (they share
// HostAddr's subnet).
func New(tb testing.TB, members, seq int) *Net {
	tb.Helper()
	if err := Available(); err != nil {
		tb.Fatal(err)
	}
	ipCmd, _ := exec.LookPath("ip")
	id := fmt.Sprintf("%03x%02x", os.Getpid()&0xfff, seq&0xff)
	n := &Net{tb: tb, ip: ipCmd, bridge: "mbr" + id}
	tb.Cleanup(n.Close)
	n.run("link", "add", n.bridge, "type", "bridge")
	n.run("addr", "add", HostAddr+"/24", "dev", n.bridge)
	n.run("link", "set", n.bridge, "up")
	for i := 0; i < members; i++ {
		ns, h, p := fmt.Sprintf("mcut%s-%d", id, i), fmt.Sprintf("mh%s%d", id, i), fmt.Sprintf("mp%s%d", id, i)
		n.ns, n.hostIf = append(n.ns, ns), append(n.hostIf, h)
		n.run("netns", "add", ns)
		n.run("link", "add", h, "type", "veth", "peer", "name", p)
		n.run("link", "set", p, "netns", ns)
		n.run("link", "set", h, "master", n.bridge)
		n.run("link", "set", h, "up")
		n.run("-n", ns, "addr", "add", n.Addr(i)+"/24", "dev", p)
		n.run("-n", ns, "link", "set", p, "up")
		n.run("-n", ns, "link", "set", "lo", "up")
	}
	return n
}

// Addr is member i's address.
func (n *Net) Addr(i int) string { return fmt.Sprintf("10.245.0.%d", i+2) }

// Command returns the program and arguments that run argv inside member
// i's namespace.
func (n *Net) Command(i int, argv ...string) (string, []string) {
	return n.ip, append([]string{"netns", "exec", n.ns[i]}, argv...)
}

// Cut takes member i off the network: its link goes down, and its
// processes keep running, unreachable.
func (n *Net) Cut(i int) { n.run("link", "set", n.hostIf[i], "down") }

func (n *Net) run(args ...string) {
	n.tb.Helper()
	if out, err := exec.Command(n.ip, args...).CombinedOutput(); err != nil {
		n.tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Close removes the network; a second call does nothing harmful.
func (n *Net) Close() {
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
