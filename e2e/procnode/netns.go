package procnode

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// podNetwork puts pods in a network namespace of the cluster's own, with
// addresses from a range used only inside it (a free 10.x.0.0/16) and a
// veth pair to the host, whose end takes the range's first usable address
// (the gateway). Pods then have addresses a Service's EndpointSlices accept
// (the apiserver refuses loopback ones), while every packet stays on this
// machine: the host reaches them over the veth, they reach the host's
// gateway address (where the coordinator listens), and they reach each
// other inside the namespace. All pods share the namespace, as pods with
// hostNetwork share a node's: a pod binds its own address.
type podNetwork struct {
	name    string // network namespace
	hostIf  string // veth end in the host namespace
	podIf   string // veth end in the pods' namespace
	prefix  netip.Prefix
	gateway netip.Addr
	ip      string // path of the ip command
}

// netnsAvailable reports whether pods can get a network namespace here:
// root, and iproute2's ip command.
func netnsAvailable() bool {
	if os.Geteuid() != 0 {
		return false
	}
	_, err := exec.LookPath("ip")
	return err == nil
}

// setupPodNetwork creates the namespace and the veth pair for a cluster
// whose state lives in dir (the names derive from it, so a second cluster
// on the same machine gets its own, and a crashed run's leftovers are
// replaced).
func setupPodNetwork(dir string, prefix netip.Prefix) (*podNetwork, error) {
	ipCmd, err := exec.LookPath("ip")
	if err != nil {
		return nil, fmt.Errorf("pod network: the ip command (iproute2) is missing: %w", err)
	}
	h := fnv.New32a()
	h.Write([]byte(dir))
	id := fmt.Sprintf("%07x", h.Sum32()&0xfffffff)
	n := &podNetwork{
		name: "muster-" + id, hostIf: "mh" + id, podIf: "mp" + id,
		prefix: prefix.Masked(), gateway: prefix.Masked().Addr().Next(), ip: ipCmd,
	}
	n.teardown() // leftovers of a run that was killed
	bits := fmt.Sprint(n.prefix.Bits())
	steps := [][]string{
		{"netns", "add", n.name},
		// Pods' addresses share one /16 on one interface: the first is the
		// primary, the rest secondaries, and by default deleting the
		// primary (its pod ended) deletes every secondary with it: every
		// other pod of the cluster lost its address at once ("Network is
		// unreachable", groups that never heal). Promote a secondary
		// instead.
		{"netns", "exec", n.name, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/all/promote_secondaries"},
		{"link", "add", n.hostIf, "type", "veth", "peer", "name", n.podIf},
		{"link", "set", n.podIf, "netns", n.name},
		{"addr", "add", n.gateway.String() + "/" + bits, "dev", n.hostIf},
		{"link", "set", n.hostIf, "up"},
		{"-n", n.name, "link", "set", "lo", "up"},
		{"-n", n.name, "link", "set", n.podIf, "up"},
	}
	for _, s := range steps {
		if err := n.run(s...); err != nil {
			n.teardown()
			return nil, err
		}
	}
	return n, nil
}

func (n *podNetwork) run(args ...string) error {
	out, err := exec.Command(n.ip, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pod network: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// addAddr gives a pod its address inside the namespace.
func (n *podNetwork) addAddr(a netip.Addr) error {
	return n.run("-n", n.name, "addr", "add", fmt.Sprintf("%s/%d", a, n.prefix.Bits()), "dev", n.podIf)
}

// delAddr takes a pod's address away again.
func (n *podNetwork) delAddr(a netip.Addr) error {
	return n.run("-n", n.name, "addr", "del", fmt.Sprintf("%s/%d", a, n.prefix.Bits()), "dev", n.podIf)
}

// wrap runs argv inside the namespace. `ip netns exec` execs the command
// in place, so the pid, process group and signals are the container's own.
func (n *podNetwork) wrap(argv []string) []string {
	return append([]string{n.ip, "netns", "exec", n.name}, argv...)
}

// teardown removes the namespace (and with it both veth ends).
func (n *podNetwork) teardown() error {
	var errs []error
	if err := n.run("netns", "del", n.name); err != nil && !strings.Contains(err.Error(), "No such file") {
		errs = append(errs, err)
	}
	_ = exec.Command(n.ip, "link", "del", n.hostIf).Run() // gone with the namespace, normally
	return errors.Join(errs...)
}

// freePodRange picks a 10.x.0.0/16 (x from 200 to 254, except 245, which
// e2e's cut-off test uses) that no route of the host overlaps: two
// clusters on one machine (tests of several packages, make cluster beside
// them) must not both put the same gateway address on their veths, or
// one's pods lose the host. 10.244.0.0/16 when it is free; otherwise a
// random free one, so that clusters starting at the same moment rarely
// collide.
func freePodRange() string {
	used := hostRoutes()
	free := func(p netip.Prefix) bool {
		for _, u := range used {
			if u.Overlaps(p) {
				return false
			}
		}
		return true
	}
	first := netip.MustParsePrefix("10.244.0.0/16")
	if free(first) {
		return first.String()
	}
	var cands []netip.Prefix
	for x := 200; x <= 254; x++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(x), 0, 0}), 16)
		if x != 245 && free(p) {
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		return first.String() // setup then says what collides
	}
	return cands[rand.IntN(len(cands))].String()
}

// hostRoutes lists the IPv4 destinations of the host's routes.
func hostRoutes() []netip.Prefix {
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return nil
	}
	var ps []netip.Prefix
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dst := f[0]
		if dst == "local" || dst == "broadcast" || dst == "unicast" {
			if len(f) < 2 {
				continue
			}
			dst = f[1]
		}
		if dst == "default" {
			continue
		}
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if p, err := netip.ParsePrefix(dst); err == nil {
			ps = append(ps, p)
		}
	}
	return ps
}
