package agent

import (
	"fmt"
	"net"
	"strconv"
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
	port, err := freePortBlock(cfg.Address, span, listenTCP)
	if err != nil {
		return 0, fmt.Errorf("--address %s: cannot listen there (is it this host's address?): %w", cfg.Address, err)
	}
	return port, nil
}

// listenFunc opens a listener; tests replace the first candidate's.
type listenFunc func(addr string) (net.Listener, error)

func listenTCP(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// freePortBlock returns a port P on host such that P..P+n-1 are all free
// now: the runtime's leader binds the whole block (SGLang derives its ports
// from MASTER_PORT, see preset.Preset.PortSpan). Candidates come from the
// kernel's ephemeral range (listen on port 0); a candidate whose block is
// partly taken, or runs past 65535, is dropped for the next one.
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
		if ok {
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
