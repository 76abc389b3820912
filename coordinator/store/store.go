// Package store keeps groups in etcd: the key layout, reads of a whole group
// as one consistent view, and the transactions that change it.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/podapi"
)

// DefaultPrefix is where muster keeps its keys in etcd.
const DefaultPrefix = "/muster/v1/groups/"

// Store reads and writes groups in etcd.
type Store struct {
	cli    *clientv3.Client
	prefix string
	// Writes counts write requests sent to etcd (puts, transactions, lease
	// grants and revocations), for benchmarks.
	Writes atomic.Int64
}

// New returns a Store on cli under prefix ("" for DefaultPrefix).
func New(cli *clientv3.Client, prefix string) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Store{cli: cli, prefix: prefix}
}

// Client returns the etcd client.
func (s *Store) Client() *clientv3.Client { return s.cli }

// GroupPrefix is the prefix of every key of group k.
func (s *Store) GroupPrefix(k podapi.Key) string {
	return s.prefix + k.Namespace + "/" + k.Name + "/"
}

func (s *Store) stateKey(k podapi.Key) string { return s.GroupPrefix(k) + "state" }

// indexPrefix is where the group index of namespace ns lies (of every
// namespace when ns is empty): beside the groups' prefix, not under it, so
// that scans of the groups never meet it.
func (s *Store) indexPrefix(ns string) string {
	p := strings.TrimSuffix(s.prefix, "/") + "-index/"
	if ns != "" {
		p += ns + "/"
	}
	return p
}

// indexKey marks that group k exists. It is written and deleted in the same
// transactions as the group's state, so a namespace's groups are counted by
// one count-only read of its index instead of a read of every key of every
// group (creating G groups read O(G^2) keys that way).
func (s *Store) indexKey(k podapi.Key) string { return s.indexPrefix(k.Namespace) + k.Name }

func (s *Store) memberKey(k podapi.Key, id string) string {
	return s.GroupPrefix(k) + "members/" + id
}

// Apply folds one key-value (or its deletion, when deleted is true) into v.
// It is used both for the initial read and for watch events.
func (s *Store) Apply(v *rendezvous.View, key string, value []byte, createRev, modRev, lease int64, deleted bool) error {
	rest := strings.TrimPrefix(key, s.GroupPrefix(v.Key))
	switch {
	case rest == "state":
		if deleted {
			v.State, v.StateRev = nil, 0
			return nil
		}
		var st rendezvous.State
		if err := json.Unmarshal(value, &st); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		v.State, v.StateRev = &st, modRev
	case strings.HasPrefix(rest, "members/"):
		id := strings.TrimPrefix(rest, "members/")
		if deleted {
			v.DeleteMember(id)
			return nil
		}
		var m rendezvous.Member
		if err := json.Unmarshal(value, &m); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		m.ID = id // the key names the member
		m.CreateRev, m.ModRev, m.Lease = createRev, modRev, lease
		v.SetMember(m)
	}
	return nil
}

// Load reads group k as one consistent view (a single range read).
func (s *Store) Load(ctx context.Context, k podapi.Key) (*rendezvous.View, error) {
	resp, err := s.cli.Get(ctx, s.GroupPrefix(k), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read group %s: %w", k, err)
	}
	v := &rendezvous.View{Key: k, Members: map[string]rendezvous.Member{}, Rev: resp.Header.Revision}
	for _, kv := range resp.Kvs {
		if err := s.Apply(v, string(kv.Key), kv.Value, kv.CreateRevision, kv.ModRevision, kv.Lease, false); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// GetMember reads one member's record; ok is false when it does not exist.
func (s *Store) GetMember(ctx context.Context, k podapi.Key, id string) (rendezvous.Member, bool, error) {
	resp, err := s.cli.Get(ctx, s.memberKey(k, id))
	if err != nil {
		return rendezvous.Member{}, false, fmt.Errorf("read member %s of group %s: %w", id, k, err)
	}
	if len(resp.Kvs) == 0 {
		return rendezvous.Member{}, false, nil
	}
	kv := resp.Kvs[0]
	var m rendezvous.Member
	if err := json.Unmarshal(kv.Value, &m); err != nil {
		return rendezvous.Member{}, false, fmt.Errorf("decode member %s of group %s: %w", id, k, err)
	}
	m.CreateRev, m.ModRev, m.Lease = kv.CreateRevision, kv.ModRevision, kv.Lease
	return m, true, nil
}

// CreateState creates the group's state if it does not exist. It returns
// the state that is there afterwards (the caller's or an earlier one) and
// its revision.
func (s *Store) CreateState(ctx context.Context, k podapi.Key, st rendezvous.State) (rendezvous.State, int64, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return rendezvous.State{}, 0, err
	}
	key := s.stateKey(k)
	s.Writes.Add(1)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(b)), clientv3.OpPut(s.indexKey(k), "")).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return rendezvous.State{}, 0, fmt.Errorf("create group %s: %w", k, err)
	}
	if resp.Succeeded {
		return st, resp.Header.Revision, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return rendezvous.State{}, 0, fmt.Errorf("create group %s: state vanished during creation; retry", k)
	}
	var cur rendezvous.State
	if err := json.Unmarshal(kvs[0].Value, &cur); err != nil {
		return rendezvous.State{}, 0, fmt.Errorf("decode state of group %s: %w", k, err)
	}
	return cur, kvs[0].ModRevision, nil
}

// SwapState replaces the group's state if it is still at revision rev. It
// reports whether the swap happened; losing a race is not an error.
func (s *Store) SwapState(ctx context.Context, k podapi.Key, rev int64, st rendezvous.State) (bool, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return false, err
	}
	key := s.stateKey(k)
	s.Writes.Add(1)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, string(b))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("update group %s: %w", k, err)
	}
	return resp.Succeeded, nil
}

// ResetState replaces a group's state with a fresh one and deletes its
// member records, if the state is still at revision rev (and, with empty,
// if the group has no member record: a group nobody is attached to).
func (s *Store) ResetState(ctx context.Context, k podapi.Key, rev int64, st rendezvous.State, empty bool) (bool, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return false, err
	}
	key := s.stateKey(k)
	members := s.GroupPrefix(k) + "members/"
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)}
	if empty {
		// No member record in the group's range: one written since the
		// caller read the group stays, and the reset does not happen.
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(members), "=", 0).WithRange(clientv3.GetPrefixRangeEnd(members)))
	}
	s.Writes.Add(1)
	resp, err := s.cli.Txn(ctx).
		If(cmps...).
		Then(clientv3.OpDelete(members, clientv3.WithPrefix()), clientv3.OpPut(key, string(b))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("reset group %s: %w", k, err)
	}
	return resp.Succeeded, nil
}

// DeleteGroup deletes every key of group k if its state is still at
// revision stateRev and it has no member records; it reports whether it
// did. Both conditions are checked inside one transaction, so a group that
// is being joined again is never deleted under its new members: a re-join
// either writes the state (ResetState, CreateState) or a member record
// first, and either makes the transaction fail. Losing that race is not an
// error. The transaction only deletes, so etcd accepts it even when its
// space quota is exhausted.
func (s *Store) DeleteGroup(ctx context.Context, k podapi.Key, stateRev int64) (bool, error) {
	if stateRev <= 0 {
		return false, fmt.Errorf("delete group %s: state revision %d: want the revision of an existing state", k, stateRev)
	}
	members := s.GroupPrefix(k) + "members/"
	s.Writes.Add(1)
	resp, err := s.cli.Txn(ctx).
		If(
			clientv3.Compare(clientv3.ModRevision(s.stateKey(k)), "=", stateRev),
			// Over a range, a comparison holds when it holds for every key,
			// and for none against an empty range's zero value: create
			// revision 0 over the prefix means no member record exists.
			clientv3.Compare(clientv3.CreateRevision(members), "=", 0).WithPrefix(),
		).
		Then(clientv3.OpDelete(s.GroupPrefix(k), clientv3.WithPrefix()), clientv3.OpDelete(s.indexKey(k))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("delete group %s at state revision %d: %w", k, stateRev, err)
	}
	return resp.Succeeded, nil
}

// GrantLease grants a lease of ttl seconds for a member record.
func (s *Store) GrantLease(ctx context.Context, ttl int64) (clientv3.LeaseID, error) {
	s.Writes.Add(1)
	resp, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return 0, fmt.Errorf("grant member lease: %w", err)
	}
	return resp.ID, nil
}

// ErrLeaseGone is PutMember's error when the lease it was given has
// expired (the member's record went with it).
var ErrLeaseGone = errors.New("the member's lease expired")

// PutMember writes a member record bound to lease. When modRev is not
// zero, the write only happens if the record is still at that revision
// (ok=false otherwise); when it is -1, only if the record does not exist.
func (s *Store) PutMember(ctx context.Context, k podapi.Key, m rendezvous.Member, lease clientv3.LeaseID, modRev int64) (ok bool, rev int64, err error) {
	b, err := json.Marshal(m)
	if err != nil {
		return false, 0, err
	}
	key := s.memberKey(k, m.ID)
	txn := s.cli.Txn(ctx)
	switch {
	case modRev > 0:
		txn = txn.If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev))
	case modRev < 0:
		txn = txn.If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
	}
	s.Writes.Add(1)
	resp, err := txn.Then(clientv3.OpPut(key, string(b), clientv3.WithLease(lease))).Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return false, 0, fmt.Errorf("write member %s of group %s: %w", m.ID, k, ErrLeaseGone)
	}
	if err != nil {
		return false, 0, fmt.Errorf("write member %s of group %s: %w", m.ID, k, err)
	}
	return resp.Succeeded, resp.Header.Revision, nil
}

// DeleteMember removes a member record and revokes its lease.
func (s *Store) DeleteMember(ctx context.Context, k podapi.Key, m rendezvous.Member) error {
	s.Writes.Add(1)
	if m.Lease != 0 {
		if _, err := s.cli.Revoke(ctx, clientv3.LeaseID(m.Lease)); err == nil {
			return nil
		}
	}
	if _, err := s.cli.Delete(ctx, s.memberKey(k, m.ID)); err != nil {
		return fmt.Errorf("remove member %s of group %s: %w", m.ID, k, err)
	}
	return nil
}

// ListKeys returns the key of every group (in namespace ns, or all when
// ns is empty).
func (s *Store) ListKeys(ctx context.Context, ns string) ([]podapi.Key, error) {
	p := s.prefix
	if ns != "" {
		p += ns + "/"
	}
	resp, err := s.cli.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	var out []podapi.Key
	for _, kv := range resp.Kvs {
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), s.prefix), "/")
		if len(parts) == 3 && parts[2] == "state" {
			out = append(out, podapi.Key{Namespace: parts[0], Name: parts[1]})
		}
	}
	return out, nil
}
