package store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/muster-dev/muster/podapi"
)

// scanBatch is the most keys one range read of a scan returns: names only,
// so a batch is about a hundred kilobytes however large the values are.
const scanBatch = 1000

// errStopScan ends a scan early without an error.
var errStopScan = errors.New("stop scan")

// Summary is what the names of a group's keys tell about it, without
// reading any value.
type Summary struct {
	Key podapi.Key
	// StateRev is the mod revision of the group's state key, 0 when it has
	// none.
	StateRev int64
	// Members counts the group's member records (live: they are bound to
	// their agents' leases).
	Members int
}

// rangeOf returns the key range of namespace ns, or of every namespace when
// ns is empty.
func (s *Store) rangeOf(ns string) (start, end string) {
	p := s.prefix
	if ns != "" {
		p += ns + "/"
	}
	return p, clientv3.GetPrefixRangeEnd(p)
}

// scan calls fn with a Summary of every group whose keys lie in [start,
// end), in key order. It reads key names only, batch keys at a time, every
// batch at the revision of the first so that the scan is one consistent
// snapshot. A group's keys are contiguous (names contain no '/'), so each
// Summary is complete when fn sees it. fn returning errStopScan ends the
// scan without an error.
func (s *Store) scan(ctx context.Context, start, end string, batch int, fn func(Summary) error) error {
	var (
		rev int64
		cur Summary
		has bool
	)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(int64(batch))}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, start, opts...)
		if err != nil {
			return fmt.Errorf("list keys from %q at revision %d: %w", start, rev, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			parts := strings.SplitN(strings.TrimPrefix(string(kv.Key), s.prefix), "/", 3)
			if len(parts) != 3 {
				continue
			}
			k := podapi.Key{Namespace: parts[0], Name: parts[1]}
			if has && k != cur.Key {
				if err := fn(cur); err != nil {
					return stopped(err)
				}
				has = false
			}
			if !has {
				cur, has = Summary{Key: k}, true
			}
			switch {
			case parts[2] == "state":
				cur.StateRev = kv.ModRevision
			case strings.HasPrefix(parts[2], "members/"):
				cur.Members++
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		// The next batch starts just after the last key read.
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	if has {
		return stopped(fn(cur))
	}
	return nil
}

func stopped(err error) error {
	if errors.Is(err, errStopScan) {
		return nil
	}
	return err
}

// ScanGroups calls fn with a Summary of every group (of namespace ns, or of
// all when ns is empty), in key order, from one consistent snapshot read
// in batches of key names. An error from fn ends the scan and is returned.
func (s *Store) ScanGroups(ctx context.Context, ns string, fn func(Summary) error) error {
	start, end := s.rangeOf(ns)
	if err := s.scan(ctx, start, end, scanBatch, fn); err != nil {
		return fmt.Errorf("scan groups of namespace %q: %w", ns, err)
	}
	return nil
}

// CountGroups returns how many groups namespace ns holds (every namespace
// when ns is empty): one count-only read of the group index, whatever the
// number of groups and members. Groups written before the index existed
// are counted once IndexGroups has run (the coordinator runs it at start).
func (s *Store) CountGroups(ctx context.Context, ns string) (int, error) {
	p := s.indexPrefix(ns)
	resp, err := s.cli.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count groups of namespace %q: %w", ns, err)
	}
	return int(resp.Count), nil
}

// IndexGroups makes the group index agree with the groups: an index key
// for every group with a state, none for a group without one. It repairs
// what a store written before the index existed lacks, and returns how
// many keys it added and removed. Each change is a transaction conditional
// on the group's state, so a group created or deleted meanwhile keeps the
// index its own transaction gave it.
func (s *Store) IndexGroups(ctx context.Context) (added, removed int, err error) {
	groups := map[podapi.Key]bool{}
	err = s.ScanGroups(ctx, "", func(g Summary) error {
		if g.StateRev != 0 {
			groups[g.Key] = true
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("index groups: %w", err)
	}
	start, end := s.indexPrefix(""), clientv3.GetPrefixRangeEnd(s.indexPrefix(""))
	indexed := map[podapi.Key]bool{}
	for {
		resp, err := s.cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(scanBatch))
		if err != nil {
			return added, removed, fmt.Errorf("index groups: list the index: %w", err)
		}
		for _, kv := range resp.Kvs {
			ns, name, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), s.indexPrefix("")), "/")
			k := podapi.Key{Namespace: ns, Name: name}
			if ok && groups[k] {
				indexed[k] = true
				continue
			}
			// No such group (or a malformed key): drop the entry, unless
			// the group's state appeared since the scan.
			s.Writes.Add(1)
			r, err := s.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(s.stateKey(k)), "=", 0)).
				Then(clientv3.OpDelete(string(kv.Key))).
				Commit()
			if err != nil {
				return added, removed, fmt.Errorf("index groups: remove %q: %w", kv.Key, err)
			}
			if r.Succeeded {
				removed++
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	for k := range groups {
		if indexed[k] {
			continue
		}
		s.Writes.Add(1)
		r, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(s.stateKey(k)), "!=", 0)).
			Then(clientv3.OpPut(s.indexKey(k), "")).
			Commit()
		if err != nil {
			return added, removed, fmt.Errorf("index groups: add %s: %w", k, err)
		}
		if r.Succeeded {
			added++
		}
	}
	return added, removed, nil
}

// ListKeysPage returns up to limit group keys (of namespace ns, or of all
// when ns is empty) in key order, starting after the group named by after
// ("namespace/name", as next gives it; "" starts at the beginning). next is
// the token of the following page, "" when this page is the last. Groups
// without a state key (member records written before it) are skipped.
// The page is read from one consistent snapshot; pages are not one
// snapshot together.
func (s *Store) ListKeysPage(ctx context.Context, ns, after string, limit int) (keys []podapi.Key, next string, err error) {
	if limit <= 0 {
		return nil, "", fmt.Errorf("list groups of namespace %q: page size %d: want at least 1", ns, limit)
	}
	start, end := s.rangeOf(ns)
	if after != "" {
		ans, aname, ok := strings.Cut(after, "/")
		if !ok || ans == "" || aname == "" || strings.Contains(aname, "/") || (ns != "" && ans != ns) {
			return nil, "", fmt.Errorf("list groups of namespace %q: page token %q is not namespace/name of that namespace", ns, after)
		}
		// The first key after every key of group after.
		start = clientv3.GetPrefixRangeEnd(s.prefix + after + "/")
	}
	// A group is its state key and its member records: read a few keys per
	// group wanted, and more batches when groups are larger.
	batch := min(max(4*(limit+1), 16), scanBatch)
	err = s.scan(ctx, start, end, batch, func(g Summary) error {
		if g.StateRev == 0 {
			return nil
		}
		if len(keys) == limit {
			// One more group exists: this page is not the last.
			next = keys[len(keys)-1].String()
			return errStopScan
		}
		keys = append(keys, g.Key)
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list groups of namespace %q after %q: %w", ns, after, err)
	}
	return keys, next, nil
}
