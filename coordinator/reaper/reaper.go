// Package reaper deletes finished groups from etcd, so that the state of
// groups that ran once does not accumulate forever.
package reaper

import (
	"cmp"
	"context"
	"log/slog"
	"time"

	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/coordinator/store"
	"github.com/muster-dev/muster/podapi"
)

// Config says when a finished group is deleted.
type Config struct {
	// TTL is how long a terminal group (Completed or Failed) with no member
	// records is kept: long enough for people and tools to read how it
	// ended. Zero or less means the default.
	TTL time.Duration
	// Interval is the time between two sweeps over every group; a group is
	// deleted between TTL and TTL+Interval after it was first seen
	// finished. Zero or less means the default.
	Interval time.Duration
}

// DefaultConfig keeps a finished group for an hour and sweeps every minute.
func DefaultConfig() Config {
	return Config{TTL: time.Hour, Interval: time.Minute}
}

// sweepTimeout bounds one sweep; a sweep reads key names and at most the
// state of each group whose state changed, far less than this.
const sweepTimeout = time.Minute

// Run deletes every group that has been terminal, with no member records,
// for cfg.TTL, sweeping every cfg.Interval until ctx is done. It blocks;
// run it in a goroutine and cancel ctx to stop it. A nil log means
// slog.Default().
//
// etcd records no times, so "terminal since" is when this replica first saw
// the group terminal and without members at its current state revision; a
// restarted replica starts counting again, which only delays a deletion by
// one TTL. Several replicas may run a reaper each: a deletion is a
// compare-and-swap on the state's revision that also requires that no
// member record exists (store.DeleteGroup), so it never removes a group
// that one of them, or a member joining it again, has changed since the
// reaper looked, and only one replica's deletion succeeds.
func Run(ctx context.Context, s *store.Store, cfg Config, log *slog.Logger) {
	def := DefaultConfig()
	if cfg.TTL <= 0 {
		cfg.TTL = def.TTL
	}
	if cfg.Interval <= 0 {
		cfg.Interval = def.Interval
	}
	if log == nil {
		log = slog.Default()
	}
	r := &reaper{store: s, ttl: cfg.TTL, log: log, seen: map[podapi.Key]seen{}}
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, sweepTimeout)
		err := r.sweep(sctx, time.Now())
		cancel()
		if err != nil && ctx.Err() == nil {
			log.Warn("sweep for finished groups failed; retrying", "err", err, "retry_in", cfg.Interval)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// seen is what a reaper remembers of a group without member records, at
// one state revision.
type seen struct {
	rev   int64
	phase rendezvous.Phase
	since time.Time // first seen at rev without members
}

type reaper struct {
	store *store.Store
	ttl   time.Duration
	log   *slog.Logger
	// seen holds the groups without member records at the last sweep, so
	// that a state is read once per revision, not once per sweep.
	seen map[podapi.Key]seen
}

// sweep looks at every group once, at time now, and deletes those that
// have been terminal without members for the TTL.
func (r *reaper) sweep(ctx context.Context, now time.Time) error {
	var empty []store.Summary
	err := r.store.ScanGroups(ctx, "", func(g store.Summary) error {
		if g.StateRev != 0 && g.Members == 0 {
			empty = append(empty, g)
		}
		return nil
	})
	if err != nil {
		return err
	}
	next := make(map[podapi.Key]seen, len(empty))
	// Groups no longer without members, or gone, are forgotten: if they
	// come back, their TTL starts again.
	defer func() { r.seen = next }()
	var firstErr error
	for _, g := range empty {
		prev, ok := r.seen[g.Key]
		if !ok || prev.rev != g.StateRev {
			v, err := r.store.Load(ctx, g.Key)
			if err != nil {
				// Keep what is known; this group is looked at next sweep.
				if ok {
					next[g.Key] = prev
				}
				firstErr = cmp.Or(firstErr, err)
				continue
			}
			if v.State == nil || len(v.Members) > 0 {
				// Deleted or joined since the scan: look again next sweep.
				continue
			}
			prev = seen{rev: v.StateRev, phase: v.State.Phase, since: now}
		}
		if !prev.phase.Terminal() || now.Sub(prev.since) < r.ttl {
			next[g.Key] = prev
			continue
		}
		deleted, err := r.store.DeleteGroup(ctx, g.Key, prev.rev)
		switch {
		case err != nil:
			next[g.Key] = prev
			firstErr = cmp.Or(firstErr, err)
		case deleted:
			r.log.Info("deleted finished group", "group", g.Key.String(), "phase", string(prev.phase), "age", now.Sub(prev.since).Round(time.Second))
		default:
			// It changed since it was read (joined again, or deleted by
			// another replica); the next sweep sees how it is now.
			r.log.Debug("finished group changed before its deletion; kept", "group", g.Key.String(), "state_rev", prev.rev)
		}
	}
	return firstErr
}
