package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// start starts a member with cfg and a client on it; both stop when the
// test ends.
func start(t *testing.T, cfg Config) (*Server, *clientv3.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(s.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.ClientURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("connect to %s: %v", s.ClientURL, err)
	}
	t.Cleanup(func() { cli.Close() })
	return s, cli
}

func TestDefaultConfigBoundsSpace(t *testing.T) {
	c := DefaultConfig(t.TempDir())
	if c.CompactionRetention != 5*time.Minute || c.QuotaBackendBytes != 2<<30 {
		t.Fatalf("DefaultConfig: retention %s, quota %d; want 5m and 2 GiB", c.CompactionRetention, c.QuotaBackendBytes)
	}
}

func TestStartRejectsNegativeLimits(t *testing.T) {
	for _, mod := range []func(*Config){
		func(c *Config) { c.CompactionRetention = -time.Second },
		func(c *Config) { c.QuotaBackendBytes = -1 },
	} {
		c := DefaultConfig(t.TempDir())
		mod(&c)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := Start(ctx, c)
		cancel()
		if err == nil {
			s.Close()
			t.Fatalf("Start with retention %s, quota %d: no error", c.CompactionRetention, c.QuotaBackendBytes)
		}
	}
}

// TestHistoryIsCompacted overwrites a key and waits until its first
// revision is compacted away.
func TestHistoryIsCompacted(t *testing.T) {
	cfg := DefaultConfig(t.TempDir())
	cfg.CompactionRetention = time.Second
	_, cli := start(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first, err := cli.Put(ctx, "k", "0")
	if err != nil {
		t.Fatalf("put k: %v", err)
	}
	old := first.Header.Revision
	for i := 1; ; i++ {
		// The periodic compactor compacts to the revision it saw one
		// retention ago, so writes must go on past that.
		if _, err := cli.Put(ctx, "k", fmt.Sprint(i)); err != nil {
			t.Fatalf("overwrite k (%d): %v", i, err)
		}
		_, err := cli.Get(ctx, "k", clientv3.WithRev(old))
		if errors.Is(err, rpctypes.ErrCompacted) {
			t.Logf("revision %d compacted after %d overwrites", old, i)
			return
		}
		if err != nil {
			t.Fatalf("get k at revision %d: %v", old, err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("revision %d of k still readable after %d overwrites and 30s: history is not compacted", old, i)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestSpaceAlarmRecovers fills a small quota until etcd refuses writes,
// deletes the data, and waits until writes are accepted again without
// anyone disarming the alarm by hand.
func TestSpaceAlarmRecovers(t *testing.T) {
	cfg := DefaultConfig(t.TempDir())
	cfg.QuotaBackendBytes = 4 << 20
	cfg.spaceCheck = 100 * time.Millisecond
	_, cli := start(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	value := strings.Repeat("x", 128<<10)
	full := false
	for i := 0; i < 200 && !full; i++ {
		_, err := cli.Put(ctx, fmt.Sprintf("fill/%03d", i), value)
		switch {
		case errors.Is(err, rpctypes.ErrNoSpace):
			full = true
		case err != nil:
			t.Fatalf("put fill/%03d: %v", i, err)
		}
	}
	if !full {
		t.Fatalf("25 MiB written under a 4 MiB quota without etcd refusing a write: the quota is not applied")
	}
	// Deletes are allowed under the alarm: they are how space is freed.
	if _, err := cli.Delete(ctx, "fill/", clientv3.WithPrefix()); err != nil {
		t.Fatalf("delete fill/ under the space alarm: %v", err)
	}
	for {
		_, err := cli.Put(ctx, "after", "ok")
		if err == nil {
			break
		}
		if !errors.Is(err, rpctypes.ErrNoSpace) {
			t.Fatalf("put after: %v", err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("writes still refused a minute after the data was deleted: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	resp, err := cli.AlarmList(ctx)
	if err != nil {
		t.Fatalf("list alarms: %v", err)
	}
	if len(resp.Alarms) != 0 {
		t.Fatalf("alarms after recovery: %v", resp.Alarms)
	}
}

// TestSpaceAlarmStaysWhenLiveDataFillsQuota: when the data itself fills the
// quota, nothing can be freed, and the member must not pretend otherwise.
func TestSpaceAlarmStaysWhenLiveDataFillsQuota(t *testing.T) {
	cfg := DefaultConfig(t.TempDir())
	cfg.QuotaBackendBytes = 4 << 20
	cfg.spaceCheck = 20 * time.Millisecond
	recoveries := make(chan error, 100)
	cfg.afterRecovery = func(err error) {
		select {
		case recoveries <- err:
		default:
		}
	}
	_, cli := start(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	value := strings.Repeat("x", 128<<10)
	// Fill until etcd refuses a write. Defragmenting may free a little
	// (the slack of half-full pages) and the member then accepts writes
	// again: fill again, until what is left is live data alone.
	i := 0
	for round := 0; ; round++ {
		if round == 10 {
			t.Fatalf("the member still frees space after 10 rounds of filling; %d values written", i)
		}
		for full := false; !full; i++ {
			if i == 200 {
				t.Fatalf("25 MiB written under a 4 MiB quota without etcd refusing a write")
			}
			_, err := cli.Put(ctx, fmt.Sprintf("fill/%03d", i), value)
			switch {
			case errors.Is(err, rpctypes.ErrNoSpace):
				full = true
			case err != nil:
				t.Fatalf("put fill/%03d: %v", i, err)
			}
		}
		var err error
		select {
		case err = <-recoveries:
		case <-ctx.Done():
			t.Fatalf("no recovery attempted within a minute of the space alarm")
		}
		if err == nil {
			t.Logf("round %d: recovery freed enough for more writes", round)
			continue
		}
		if !strings.Contains(err.Error(), "live data fills it") {
			t.Fatalf("recovery with live data filling the quota: %v; want an error saying live data fills it", err)
		}
		break
	}
	if _, err := cli.Put(ctx, "after", "ok"); !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("put with live data filling the quota: got %v, want %v", err, rpctypes.ErrNoSpace)
	}
}
