// Package embedetcd runs a real etcd server inside the coordinator process,
// the default for one machine and for tests.
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/storage/mvcc"
	"go.uber.org/zap"
)

// Defaults for the space etcd may use.
const (
	// DefaultCompactionRetention is how much history etcd keeps. muster reads
	// history only to resume a watch: a hub watches from the revision of the
	// read it just made (milliseconds earlier) and reloads the group when
	// the watch reports the revision compacted, so a few minutes is ample;
	// it is what kube-apiserver uses for its own etcd.
	DefaultCompactionRetention = 5 * time.Minute
	// DefaultQuotaBackendBytes caps etcd's database file (etcd's own
	// default, stated so that it is a decision rather than an accident).
	// Live groups are small; the cap is there so that a burst of writes
	// fills a bounded file instead of the disk.
	DefaultQuotaBackendBytes = 2 << 30
	// bootstrapDefragMegabytes: at start, etcd defragments its database
	// when that frees at least this much. See Start for why defragmentation
	// happens only then (and on a space alarm).
	bootstrapDefragMegabytes = 64
	// defaultSpaceCheck is how often a member looks for its space alarm.
	defaultSpaceCheck = 10 * time.Second
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
	// CompactionRetention is how much history (by age) etcd keeps before
	// compacting it away; zero means DefaultCompactionRetention. Without
	// compaction every overwrite of a key is kept forever.
	CompactionRetention time.Duration
	// QuotaBackendBytes caps the size of etcd's database file; zero means
	// DefaultQuotaBackendBytes. Past it etcd refuses writes (a space
	// alarm) until the member has freed space; see Start.
	QuotaBackendBytes int64
	// Logger hears about space alarms and their recovery; nil discards.
	Logger *slog.Logger

	// spaceCheck overrides defaultSpaceCheck, and afterRecovery hears the
	// outcome of each recovery from the space alarm, for tests.
	spaceCheck    time.Duration
	afterRecovery func(error)
}

// DefaultConfig is a single member on loopback with free ports.
func DefaultConfig(dir string) Config {
	return Config{
		Name: "muster", Dir: dir, ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:0", StartTimeout: time.Minute,
		CompactionRetention: DefaultCompactionRetention,
		QuotaBackendBytes:   DefaultQuotaBackendBytes,
	}
}

// Server is a running embedded etcd member.
type Server struct {
	etcd  *embed.Etcd
	once  sync.Once
	log   *slog.Logger
	quota int64
	// afterRecovery is Config.afterRecovery.
	afterRecovery func(error)
	stop          chan struct{}
	wg            sync.WaitGroup
	// ClientURL is where clients reach this member.
	ClientURL string
}

// Start starts the member and waits until it serves.
//
// The member compacts its history, keeping the last CompactionRetention of
// it ("periodic" mode: it compacts every retention, at most hourly).
// Periodic rather than "revision" mode because what must survive
// compaction is measured in time (the gap between a hub's read and its
// watch, or a watch's reconnect), while how many revisions that is depends
// on the write rate, which clients control: under a burst a revision count
// could be seconds of history, and a periodic retention keeps exactly the
// window resumed watches need. (Either mode only compacts every few
// minutes: what bounds the size of a burst is the quota.)
//
// Compaction frees pages inside the database file, and bbolt reuses them
// for later writes, so in steady state the file stays at its high-water
// mark instead of growing. Defragmenting, which returns that space to the
// disk, blocks every read and write of the member for as long as it copies
// the database, so it is not done periodically: only at start (when it
// frees at least 64 MiB, before the member serves) and when the member
// raises its space alarm. etcd keeps that alarm, refusing every write that
// adds data, until someone disarms it, so the member watches for it: it
// compacts all history, defragments, and disarms the alarm if the file is
// then below 90% of the quota (if live data alone fills the quota, the
// alarm stays and a warning says so), at most once every ten checks.
func Start(ctx context.Context, c Config) (*Server, error) {
	retention := c.CompactionRetention
	if retention == 0 {
		retention = DefaultCompactionRetention
	}
	if retention < 0 {
		return nil, fmt.Errorf("embedded etcd compaction retention %s: must be positive", retention)
	}
	quota := c.QuotaBackendBytes
	if quota == 0 {
		quota = DefaultQuotaBackendBytes
	}
	if quota < 0 {
		return nil, fmt.Errorf("embedded etcd backend quota %d bytes: must be positive", quota)
	}
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
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = retention.String()
	cfg.QuotaBackendBytes = quota
	cfg.BootstrapDefragThresholdMegabytes = bootstrapDefragMegabytes
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
	log := c.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{etcd: e, log: log.With("etcd_member", c.Name), quota: quota, afterRecovery: c.afterRecovery, stop: make(chan struct{}), ClientURL: cu.String()}
	every := c.spaceCheck
	if every <= 0 {
		every = defaultSpaceCheck
	}
	s.wg.Add(1)
	go s.guardSpace(every)
	return s, nil
}

// Close stops the member; it may be called more than once.
func (s *Server) Close() {
	s.once.Do(func() {
		close(s.stop)
		s.wg.Wait()
		s.etcd.Close()
	})
}

// Err reports a fatal error of the running member.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Revision is the member's current store revision: every write to etcd
// increases it by one, so benchmarks count writes with it.
func (s *Server) Revision() int64 { return s.etcd.Server.KV().Rev() }

// guardSpace looks for this member's space alarm every interval and
// recovers from it (see Start). Recoveries are at least ten intervals
// apart, whether the last one freed space or not: a database that live
// data keeps refilling is not defragmented, blocking everything, every few
// seconds.
func (s *Server) guardSpace(every time.Duration) {
	defer s.wg.Done()
	var last time.Time
	for {
		select {
		case <-s.stop:
			return
		case <-time.After(every):
		}
		if !s.spaceAlarmed() || (!last.IsZero() && time.Since(last) < 10*every) {
			continue
		}
		last = time.Now()
		err := s.recoverSpace()
		if s.afterRecovery != nil {
			s.afterRecovery(err)
		}
		if err != nil {
			s.log.Warn("etcd space alarm: recovery failed; retrying", "err", err, "retry_in", 10*every)
		}
	}
}

// spaceAlarmed reports whether this member has raised its space alarm.
func (s *Server) spaceAlarmed() bool {
	id := uint64(s.etcd.Server.MemberID())
	for _, a := range s.etcd.Server.Alarms() {
		if a.Alarm == pb.AlarmType_NOSPACE && a.MemberID == id {
			return true
		}
	}
	return false
}

// recoverSpace compacts all history, defragments and disarms the space
// alarm if that brought the database below 90% of the quota.
func (s *Server) recoverSpace() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		// Close must not wait a minute for a recovery in flight.
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	srv := s.etcd.Server
	before := srv.Backend().Size()
	rev := srv.KV().Rev()
	// Physical: wait until the compacted revisions are gone from the
	// database, so that defragmenting frees them.
	if _, err := srv.Compact(ctx, &pb.CompactionRequest{Revision: rev, Physical: true}); err != nil && !errors.Is(err, mvcc.ErrCompacted) {
		return fmt.Errorf("compact etcd history up to revision %d: %w", rev, err)
	}
	if err := srv.Defragment(); err != nil {
		return fmt.Errorf("defragment etcd database: %w", err)
	}
	after := srv.Backend().Size()
	if after >= s.quota/10*9 {
		return fmt.Errorf("etcd database is %d bytes after compaction and defragmentation, still at least 90%% of its %d-byte quota: live data fills it (delete groups, or raise the quota)", after, s.quota)
	}
	_, err := srv.Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_DEACTIVATE, MemberID: uint64(srv.MemberID()), Alarm: pb.AlarmType_NOSPACE})
	if err != nil {
		return fmt.Errorf("disarm etcd space alarm: %w", err)
	}
	s.log.Warn("etcd space alarm: database was full; compacted, defragmented and disarmed", "size_before_bytes", before, "size_after_bytes", after, "quota_bytes", s.quota, "compact_revision", rev)
	return nil
}

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
