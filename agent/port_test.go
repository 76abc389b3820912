package agent

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestFreePortBlockSkipsACandidateWhoseBlockIsTaken: the first candidate P
// has P+3 taken, so the block must come from the next candidate, and all of
// it must be free.
func TestFreePortBlockSkipsACandidateWhoseBlockIsTaken(t *testing.T) {
	const host, n = "127.0.0.1", 14
	var first int
	var taken net.Listener
	for first == 0 {
		l, err := net.Listen("tcp", host+":0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if taken, err = net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p+3))); err == nil && p+n-1 <= 65535 {
			first = p
		}
	}
	defer taken.Close()
	calls := 0
	listen := func(addr string) (net.Listener, error) {
		calls++
		if calls == 1 {
			return net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(first)))
		}
		return net.Listen("tcp", addr)
	}
	p, err := freePortBlock(host, n, listen)
	if err != nil {
		t.Fatal(err)
	}
	if p == first || calls < 2 {
		t.Fatalf("picked %d (after %d candidates), but %d+3 is taken", p, calls, first)
	}
	if busy := busyInBlock(host, p, n); busy != 0 {
		t.Fatalf("picked %d, but %d in its block is taken", p, busy)
	}
	if busy := busyInBlock(host, first+3, 1); busy != first+3 {
		t.Fatalf("busyInBlock(%d, 1) = %d, want it to find the port taken", first+3, busy)
	}
}

func TestFreePortBlockNeverRunsPast65535(t *testing.T) {
	listen := func(string) (net.Listener, error) { return fakeListener{port: 65530}, nil }
	if p, err := freePortBlock("127.0.0.1", 14, listen); err == nil {
		t.Fatalf("picked %d: its block of 14 runs past 65535", p)
	}
}

type fakeListener struct{ port int }

func (f fakeListener) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (f fakeListener) Close() error              { return nil }
func (f fakeListener) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: f.port} }

// The master port the agent picks lies below the kernel's ephemeral range,
// where no outgoing connection takes it as its local port while the group
// runs, and is free on every address, as the runtime binds it.
func TestMasterPortIsBelowTheEphemeralRange(t *testing.T) {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Skipf("no ephemeral range to check against: %v", err)
	}
	low, err := strconv.Atoi(strings.Fields(string(data))[0])
	if err != nil || low < 11000 {
		t.Skipf("ephemeral range %q leaves no room below it", strings.TrimSpace(string(data)))
	}
	for range 5 {
		p, err := masterPort(Config{Address: "127.0.0.2"}, 3)
		if err != nil {
			t.Fatal(err)
		}
		if p >= low || p+2 >= low {
			t.Fatalf("master port block %d-%d reaches the ephemeral range from %d", p, p+2, low)
		}
		if busy := busyInBlock("", p, 3); busy != 0 {
			t.Fatalf("master port block from %d: %d is taken on some address", p, busy)
		}
	}
}
