// Package freeport picks local ports, below the kernel's ephemeral range,
// for tests to hand to the servers they start and for the agent's master
// port (picked at start, bound by each generation's runtime).
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Pick picks n distinct free ports on 127.0.0.1, below the kernel's
// ephemeral range (net.ipv4.ip_local_port_range), for a test to hand to a
// server it starts. The ports are released before the server binds them,
// often seconds later (a cluster's components). A port the kernel gave
// for ":0" lies in the ephemeral range, which the kernel also hands out as
// the local port of every outgoing connection, and this machine makes many
// meanwhile (kube-apiserver to etcd, every client to the apiserver): one of
// them took the scheduler's port once, and the cluster failed to start
// ("bind: address already in use"). Below that range only another explicit
// bind can take a port, and the search starts at a random place so that
// clusters started side by side do not try the same ones. Where there is
// no room below the range, the kernel picks.
func Pick(n int) ([]int, error) { return PickOn("127.0.0.1", n) }

// PickOn is Pick on another local address (127.0.0.2, a test network's
// bridge).
func PickOn(host string, n int) ([]int, error) {
	lo, hi := 10000, ephemeralLow()
	if hi-lo < 1000 {
		return kernelPorts(host, n)
	}
	var ports []int
	start := lo + rand.IntN(hi-lo)
	for i := 0; i < hi-lo && len(ports) < n; i++ {
		port := lo + (start-lo+i)%(hi-lo)
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if errors.Is(err, syscall.EADDRINUSE) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("pick a free port on %s: %w", host, err)
		}
		l.Close()
		ports = append(ports, port)
	}
	if len(ports) < n {
		return nil, fmt.Errorf("pick %d free ports on %s between %d and %d: found %d", n, host, lo, hi, len(ports))
	}
	return ports, nil
}

// ephemeralLow is the first port of the kernel's ephemeral range, or 0
// when it cannot be read.
func ephemeralLow() int {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return 0
	}
	low, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return low
}

// kernelPorts picks n distinct free ports the kernel's way (":0").
func kernelPorts(host string, n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
