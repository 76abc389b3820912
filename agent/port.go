package agent

import (
	"fmt"
	"net"
	"strconv"

	"github.com/muster-dev/muster/internal/freeport"
)

// masterPort is the port this member offers as MASTER_PORT should it lead:
// cfg.MasterPort, or else a free one on cfg.Address with the span-1 ports
// after it free as well (span is the preset's PortSpan; 0 means 1).
func masterPort(cfg Config, span int) (int, error) {
	span = max(span, 1)
	if port := cfg.MasterPort; port != 0 {
		if span > 1 {
			if busy := busyInBlock(cfg.Address, port, span); busy != 0 {
				cfg.Logger.Warn(fmt.Sprintf("--master-port %d: runtime %s uses ports %d-%d on the leader, and %d is taken now", port, cfg.Runtime, port, port+span-1, busy))
			}
		}
		return port, nil
	}
	// Every member picks a port on its own address; the leader's becomes
	// MASTER_PORT. Picking it here also proves the address is this host's.
	port, err := freePortBlock(cfg.Address, span, listenLow)
	if err != nil {
		return 0, fmt.Errorf("--address %s: cannot listen there (is it this host's address?): %w", cfg.Address, err)
	}
	return port, nil
}

// listenFunc opens a listener; tests replace the first candidate's.
type listenFunc func(addr string) (net.Listener, error)

func listenTCP(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// listenLow listens on addr's host at a port below the kernel's ephemeral
// range (freeport.PickOn). The master port is picked when the agent starts
// and used by every generation's runtime: a port from the ephemeral range
// could meanwhile become the local port of any outgoing connection on the
// host, and then every generation's runtime would fail to bind it.
func listenLow(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	for range 8 {
		ports, err := freeport.PickOn(host, 1)
		if err != nil {
			return nil, err
		}
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(ports[0])))
		if err == nil {
			return l, nil
		}
	}
	return net.Listen("tcp", addr) // taken each time between pick and listen: the kernel's pick
}

// freePortBlock returns a port P on host such that P..P+n-1 are all free
// now, on host and on every address (runtimes such as torch's TCPStore
// bind the port on all of them): the runtime's leader binds the whole
// block (SGLang derives its ports from MASTER_PORT, see
// preset.Preset.PortSpan). Candidates come from listen on host port 0
// (listenLow in the agent); a candidate whose block is partly taken, or
// runs past 65535, is dropped for the next one.
func freePortBlock(host string, n int, listen listenFunc) (int, error) {
	if n < 1 {
		n = 1
	}
	const attempts = 64
	for range attempts {
		l, err := listen(net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		held := []net.Listener{l}
		ok := p+n-1 <= 65535
		for i := 1; ok && i < n; i++ {
			li, err := listenTCP(net.JoinHostPort(host, strconv.Itoa(p+i)))
			if err != nil {
				ok = false
				break
			}
			held = append(held, li)
		}
		for _, h := range held {
			h.Close()
		}
		if ok && busyInBlock("", p, n) == 0 {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no block of %d free ports on %s after %d tries", n, host, attempts)
}

// busyInBlock returns the first port of p..p+n-1 on host that cannot be
// listened on, or 0 when all are free.
func busyInBlock(host string, p, n int) int {
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p+i)))
		if err != nil {
			return p + i
		}
		l.Close()
	}
	return 0
}
