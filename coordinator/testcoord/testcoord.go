// Package testcoord starts real coordinator replicas (with a real embedded
// etcd) for tests and benchmarks in other packages.
package testcoord

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/muster-dev/muster/coordinator"
	"github.com/muster-dev/muster/coordinator/embedetcd"
	"github.com/muster-dev/muster/internal/freeport"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// Config returns a coordinator configuration on loopback with free ports,
// its data in a test directory, and the shortest member TTL etcd allows, so
// that lost members are noticed quickly.
func Config(tb testing.TB) coordinator.Config {
	tb.Helper()
	c := coordinator.DefaultConfig()
	c.Listen = "127.0.0.1:0"
	c.DataDir = tb.TempDir()
	c.EtcdClientAddr = FreeAddr(tb)
	c.EtcdPeerAddr = FreeAddr(tb)
	c.MemberTTL = 2 * time.Second
	c.Logger = Logger(tb)
	return c
}

// Logger writes to the test log when MUSTER_TEST_LOG is set, else nowhere.
func Logger(tb testing.TB) *slog.Logger {
	if os.Getenv("MUSTER_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Start starts a replica with cfg (Config(tb) when nil mods are given) and
// stops it when the test ends.
func Start(tb testing.TB, cfg coordinator.Config) *coordinator.Coordinator {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := coordinator.Start(ctx, cfg)
	if err != nil {
		tb.Fatalf("start coordinator: %v", err)
	}
	tb.Cleanup(c.Close)
	return c
}

// Client dials a replica and closes the connection when the test ends.
func Client(tb testing.TB, addr string) musterv1.RendezvousClient {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatalf("dial %s: %v", addr, err)
	}
	tb.Cleanup(func() { conn.Close() })
	return musterv1.NewRendezvousClient(conn)
}

// FreeAddr returns a loopback host:port that was free a moment ago, below
// the kernel's ephemeral range (see freeport.Pick).
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	ports, err := freeport.Pick(1)
	if err != nil {
		tb.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
}

// Etcd starts an embedded etcd member of its own (a cluster of one) for
// tests whose coordinator replicas must be able to die without taking the
// data with them; it stops when the test ends.
func Etcd(tb testing.TB) string {
	tb.Helper()
	cfg := embedetcd.DefaultConfig(tb.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := embedetcd.Start(ctx, cfg)
	if err != nil {
		tb.Fatalf("start etcd: %v", err)
	}
	tb.Cleanup(e.Close)
	return e.ClientURL
}

// EtcdCluster starts n embedded etcd members forming one cluster on
// loopback and returns them (client URLs in ClientURL); each stops when the
// test ends, or earlier with Close.
func EtcdCluster(tb testing.TB, n int) []*embedetcd.Server {
	tb.Helper()
	cfgs := make([]embedetcd.Config, n)
	var initial []string
	for i := range cfgs {
		cfgs[i] = embedetcd.DefaultConfig(tb.TempDir())
		cfgs[i].Name = fmt.Sprintf("m%d", i)
		cfgs[i].ClientAddr, cfgs[i].PeerAddr = FreeAddr(tb), FreeAddr(tb)
		initial = append(initial, fmt.Sprintf("%s=http://%s", cfgs[i].Name, cfgs[i].PeerAddr))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := make([]*embedetcd.Server, n)
	errs := make(chan error, n)
	// A member is ready only once a quorum is up: start them together.
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(initial, ",")
		go func(i int) {
			s, err := embedetcd.Start(ctx, cfgs[i])
			out[i] = s
			errs <- err
		}(i)
	}
	for range cfgs {
		if err := <-errs; err != nil {
			tb.Fatalf("start etcd cluster: %v", err)
		}
	}
	for _, s := range out {
		tb.Cleanup(s.Close)
	}
	return out
}

// WaitServing waits until a coordinator answers at addr (a ListGroups
// call), for at most timeout or until exited is closed (its process ended).
func WaitServing(addr string, timeout time.Duration, exited <-chan struct{}) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	c := musterv1.NewRendezvousClient(conn)
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.ListGroups(ctx, &musterv1.ListGroupsRequest{})
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("coordinator not serving at %s after %s: %w", addr, timeout, err)
		}
		select {
		case <-exited:
			return fmt.Errorf("coordinator exited before serving at %s", addr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
