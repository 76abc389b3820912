package procnode

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"
)

// A pod that ends takes only its own address: with the addresses of one
// /16 on one interface, the kernel by default deletes every secondary
// address with the primary, so the first pod's end cut every other pod off.
func TestPodAddressOutlivesTheFirstPods(t *testing.T) {
	if !netnsAvailable() {
		t.Skip("needs root and iproute2")
	}
	n, err := setupPodNetwork(t.TempDir(), netip.MustParsePrefix("10.252.0.0/16"))
	if err != nil {
		t.Fatal(err)
	}
	defer n.teardown()
	first, second := netip.MustParseAddr("10.252.0.2"), netip.MustParseAddr("10.252.0.3")
	for _, a := range []netip.Addr{first, second} {
		if err := n.addAddr(a); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.delAddr(first); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(n.ip, "-n", n.name, "-4", "addr", "show", "dev", n.podIf).CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr show: %v: %s", err, out)
	}
	if !strings.Contains(string(out), second.String()+"/16") {
		t.Fatalf("the second pod's address went with the first's:\n%s", out)
	}
}
