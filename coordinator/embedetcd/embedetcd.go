// Package embedetcd runs a real etcd server inside the coordinator process,
// the default for one machine and for tests.
package embedetcd

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Config describes one embedded etcd member.
type Config struct {
	// Name of this member; Dir holds its data (kept across restarts).
	Name string
	Dir  string
	// ClientAddr and PeerAddr are host:port to listen on; port 0 picks a
	// free one.
	ClientAddr string
	PeerAddr   string
	// InitialCluster lists every member as name=http://host:port; empty
	// means a cluster of this member alone.
	InitialCluster string
	// StartTimeout bounds the wait for the member to become ready.
	StartTimeout time.Duration
}

// DefaultConfig is a single member on loopback with free ports.
func DefaultConfig(dir string) Config {
	return Config{Name: "muster", Dir: dir, ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:0", StartTimeout: time.Minute}
}

// Server is a running embedded etcd member.
type Server struct {
	etcd *embed.Etcd
	once sync.Once
	// ClientURL is where clients reach this member.
	ClientURL string
}

// Start starts the member and waits until it serves.
func Start(ctx context.Context, c Config) (*Server, error) {
	client, err := resolve(c.ClientAddr)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd client address %q: %w", c.ClientAddr, err)
	}
	peer, err := resolve(c.PeerAddr)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd peer address %q: %w", c.PeerAddr, err)
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.Dir
	// etcd logs through zap; its shutdown chatter ("server closed") is
	// noise for muster's users, so only the coordinator's own log speaks.
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cu := url.URL{Scheme: "http", Host: client}
	pu := url.URL{Scheme: "http", Host: peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = c.InitialCluster
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = fmt.Sprintf("%s=%s", c.Name, pu.String())
	}
	// The default 2 GiB backend quota is far more than groups need; keep
	// the snapshot cadence default.
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", c.Dir, err)
	}
	timeout := c.StartTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: %w", c.Dir, err)
	case <-time.After(timeout):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s not ready after %s", c.Dir, timeout)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	return &Server{etcd: e, ClientURL: cu.String()}, nil
}

// Close stops the member; it may be called more than once.
func (s *Server) Close() { s.once.Do(s.etcd.Close) }

// Err reports a fatal error of the running member.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Revision is the member's current store revision: every write to etcd
// increases it by one, so benchmarks count writes with it.
func (s *Server) Revision() int64 { return s.etcd.Server.KV().Rev() }

// resolve turns host:0 into host:<free port>. Peer URLs must be known before
// the member starts, so the port is chosen up front.
func resolve(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if port != "0" {
		return addr, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
