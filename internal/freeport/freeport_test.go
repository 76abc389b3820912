package freeport

import (
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The ports lie below the kernel's ephemeral range, where no outgoing
// connection can take one as its local port between the pick and the
// server's bind; they are distinct and can be bound.
func TestPickIsOutsideTheEphemeralRange(t *testing.T) {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Skipf("no ephemeral range to check against: %v", err)
	}
	low, err := strconv.Atoi(strings.Fields(string(data))[0])
	if err != nil || low < 11000 {
		t.Skipf("ephemeral range %q leaves no room below it", strings.TrimSpace(string(data)))
	}
	for range 10 {
		ports, err := Pick(3)
		if err != nil {
			t.Fatal(err)
		}
		if len(ports) != 3 || len(slices.Compact(slices.Sorted(slices.Values(ports)))) != 3 {
			t.Fatalf("Pick(3) = %v; want 3 distinct ports", ports)
		}
		for _, port := range ports {
			if port >= low {
				t.Fatalf("Pick(3) = %v: %d is inside the ephemeral range from %d", ports, port, low)
			}
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				t.Fatalf("Pick(3) = %v: %d cannot be bound: %v", ports, port, err)
			}
			l.Close()
		}
	}
}

// PickOn picks on the address it is given: the ports bind there, and an
// address that is not this machine's is an error, not a port.
func TestPickOnAnotherAddress(t *testing.T) {
	ports, err := PickOn("127.0.0.2", 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, port := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("PickOn(127.0.0.2) = %v: %d cannot be bound there: %v", ports, port, err)
		}
		l.Close()
	}
	// 192.0.2.1 (TEST-NET-1) is no address of this machine: nothing binds.
	if ports, err := PickOn("192.0.2.1", 1); err == nil {
		t.Fatalf("PickOn(192.0.2.1) = %v; want an error", ports)
	}
}
