package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/muster-dev/muster/coordinator/embedetcd"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/coordinator/store"
	"github.com/muster-dev/muster/podapi"
)

// etcdURL is the client URL of the embedded etcd every test of this package
// shares; each test keeps its keys under a prefix of its own.
var etcdURL string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "store-test-etcd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "make etcd dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := embedetcd.Start(ctx, embedetcd.DefaultConfig(dir))
	if err != nil {
		fmt.Fprintln(os.Stderr, "start etcd:", err)
		return 1
	}
	defer e.Close()
	etcdURL = e.ClientURL
	return m.Run()
}

// newStore returns a Store under a prefix of the test's own, and a context
// that bounds the test.
func newStore(t *testing.T) (*store.Store, context.Context) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("connect to %s: %v", etcdURL, err)
	}
	t.Cleanup(func() { cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return store.New(cli, "/test/"+t.Name()+"/"), ctx
}

// create creates group k with members ids (each under a lease of its own)
// and returns the state revision.
func create(t *testing.T, ctx context.Context, s *store.Store, k podapi.Key, phase rendezvous.Phase, ids ...string) int64 {
	t.Helper()
	st := rendezvous.NewState(len(ids)+1, "env", 3)
	st.Phase = phase
	_, rev, err := s.CreateState(ctx, k, st)
	if err != nil {
		t.Fatalf("create %s: %v", k, err)
	}
	for _, id := range ids {
		lease, err := s.GrantLease(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}
		if ok, _, err := s.PutMember(ctx, k, rendezvous.Member{ID: id, Address: "10.0.0.1"}, lease, -1); err != nil || !ok {
			t.Fatalf("put member %s of %s: ok=%v err=%v", id, k, ok, err)
		}
	}
	return rev
}

func TestDeleteGroup(t *testing.T) {
	s, ctx := newStore(t)
	done := podapi.Key{Namespace: "ns", Name: "done"}
	rev := create(t, ctx, s, done, rendezvous.Completed)
	// Another group whose name extends this one's must survive.
	other := podapi.Key{Namespace: "ns", Name: "done2"}
	create(t, ctx, s, other, rendezvous.Completed)

	if ok, err := s.DeleteGroup(ctx, done, rev-1); err != nil || ok {
		t.Fatalf("delete at a stale state revision: ok=%v err=%v; want false, nil", ok, err)
	}
	if ok, err := s.DeleteGroup(ctx, done, rev); err != nil || !ok {
		t.Fatalf("delete at the state revision: ok=%v err=%v; want true, nil", ok, err)
	}
	v, err := s.Load(ctx, done)
	if err != nil {
		t.Fatal(err)
	}
	if v.State != nil || len(v.Members) != 0 {
		t.Fatalf("after delete: state %+v, members %v; want nothing", v.State, v.Members)
	}
	if v, err := s.Load(ctx, other); err != nil || v.State == nil {
		t.Fatalf("group %s after deleting %s: %+v, %v; want it intact", other, done, v, err)
	}
	// Deleting again (another replica lost the race) is not an error.
	if ok, err := s.DeleteGroup(ctx, done, rev); err != nil || ok {
		t.Fatalf("delete of a deleted group: ok=%v err=%v; want false, nil", ok, err)
	}
}

func TestDeleteGroupKeepsGroupWithMembers(t *testing.T) {
	s, ctx := newStore(t)
	k := podapi.Key{Namespace: "ns", Name: "g"}
	rev := create(t, ctx, s, k, rendezvous.Failed, "a")
	if ok, err := s.DeleteGroup(ctx, k, rev); err != nil || ok {
		t.Fatalf("delete of a group with a member: ok=%v err=%v; want false, nil", ok, err)
	}
	v, err := s.Load(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if v.State == nil || len(v.Members) != 1 {
		t.Fatalf("group after a refused delete: state %+v, members %v; want both kept", v.State, v.Members)
	}
}

// TestDeleteGroupLosesToRejoin: a re-join resets the state (its revision
// moves) before the reaper's delete lands; the delete must not happen.
func TestDeleteGroupLosesToRejoin(t *testing.T) {
	s, ctx := newStore(t)
	k := podapi.Key{Namespace: "ns", Name: "g"}
	rev := create(t, ctx, s, k, rendezvous.Completed)
	if ok, err := s.ResetState(ctx, k, rev, rendezvous.NewState(2, "env", 3), false); err != nil || !ok {
		t.Fatalf("reset: ok=%v err=%v", ok, err)
	}
	if ok, err := s.DeleteGroup(ctx, k, rev); err != nil || ok {
		t.Fatalf("delete after a re-join: ok=%v err=%v; want false, nil", ok, err)
	}
	if v, err := s.Load(ctx, k); err != nil || v.State == nil || v.State.Phase != rendezvous.Waiting {
		t.Fatalf("group after the re-join: %+v, %v; want its fresh state", v, err)
	}
}

func TestCountGroups(t *testing.T) {
	s, ctx := newStore(t)
	if n, err := s.CountGroups(ctx, "a"); err != nil || n != 0 {
		t.Fatalf("count of an empty namespace: %d, %v", n, err)
	}
	for i := range 5 {
		create(t, ctx, s, podapi.Key{Namespace: "a", Name: fmt.Sprintf("g%d", i)}, rendezvous.Waiting, "m0", "m1")
	}
	create(t, ctx, s, podapi.Key{Namespace: "b", Name: "g"}, rendezvous.Running, "m0")
	// A namespace whose name extends another's is not counted with it.
	create(t, ctx, s, podapi.Key{Namespace: "a-2", Name: "g"}, rendezvous.Running)
	counts := func(step string, want map[string]int) {
		t.Helper()
		for ns, w := range want {
			if n, err := s.CountGroups(ctx, ns); err != nil || n != w {
				t.Errorf("%s: CountGroups(%q) = %d, %v; want %d", step, ns, n, err, w)
			}
		}
	}
	counts("created", map[string]int{"a": 5, "b": 1, "a-2": 1, "c": 0, "": 7})

	// Deleting a group takes it out of the count; a reset keeps it.
	k := podapi.Key{Namespace: "a-2", Name: "g"}
	v, err := s.Load(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := s.DeleteGroup(ctx, k, v.StateRev); err != nil || !ok {
		t.Fatalf("delete a-2/g: %v %v", ok, err)
	}
	k = podapi.Key{Namespace: "b", Name: "g"}
	if v, err = s.Load(ctx, k); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.ResetState(ctx, k, v.StateRev, rendezvous.NewState(1, "env", 1), false); err != nil || !ok {
		t.Fatalf("reset b/g: %v %v", ok, err)
	}
	counts("a-2/g deleted, b/g reset", map[string]int{"a": 5, "b": 1, "a-2": 0, "": 6})

	// The index agrees with the groups: nothing to repair. A stray entry
	// (its group deleted by a coordinator without the index) is removed.
	if added, removed, err := s.IndexGroups(ctx); err != nil || added+removed != 0 {
		t.Fatalf("IndexGroups on an agreeing index: %d added, %d removed, %v", added, removed, err)
	}
	if _, err := s.Client().Put(ctx, "/test/"+t.Name()+"-index/b/gone", ""); err != nil {
		t.Fatal(err)
	}
	counts("stray entry", map[string]int{"b": 2})
	if added, removed, err := s.IndexGroups(ctx); err != nil || added != 0 || removed != 1 {
		t.Fatalf("IndexGroups with a stray entry: %d added, %d removed, %v; want 0, 1", added, removed, err)
	}
	counts("repaired", map[string]int{"a": 5, "b": 1, "a-2": 0, "": 6})
}

// TestCountGroupsManyBatches counts past one read batch, with groups whose
// keys straddle batch boundaries.
func TestCountGroupsManyBatches(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 1200 groups")
	}
	s, ctx := newStore(t)
	cli := s.Client()
	// Raw puts in few transactions: the store's writes would take a
	// transaction each.
	const n = 1200
	var ops []clientv3.Op
	for i := range n {
		p := s.GroupPrefix(podapi.Key{Namespace: "ns", Name: fmt.Sprintf("g%04d", i)})
		ops = append(ops, clientv3.OpPut(p+"members/a", "{}"), clientv3.OpPut(p+"state", "{}"))
		if len(ops) >= 100 {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = nil
		}
	}
	// Written as a coordinator before the group index would have: no
	// index yet, until IndexGroups repairs it.
	if got, err := s.CountGroups(ctx, "ns"); err != nil || got != 0 {
		t.Fatalf("CountGroups before the index = %d, %v; want 0", got, err)
	}
	if added, removed, err := s.IndexGroups(ctx); err != nil || added != n || removed != 0 {
		t.Fatalf("IndexGroups = %d added, %d removed, %v; want %d, 0", added, removed, err, n)
	}
	if got, err := s.CountGroups(ctx, "ns"); err != nil || got != n {
		t.Fatalf("CountGroups = %d, %v; want %d", got, err, n)
	}
	var seen int
	err := s.ScanGroups(ctx, "ns", func(g store.Summary) error {
		if g.StateRev == 0 || g.Members != 1 {
			return fmt.Errorf("group %s: state revision %d, %d members; want a state and 1 member", g.Key, g.StateRev, g.Members)
		}
		seen++
		return nil
	})
	if err != nil || seen != n {
		t.Fatalf("ScanGroups saw %d groups, %v; want %d", seen, err, n)
	}
}

func TestScanGroups(t *testing.T) {
	s, ctx := newStore(t)
	rev := create(t, ctx, s, podapi.Key{Namespace: "ns", Name: "a"}, rendezvous.Completed)
	create(t, ctx, s, podapi.Key{Namespace: "ns", Name: "b"}, rendezvous.Running, "m0", "m1", "m2")
	var got []string
	err := s.ScanGroups(ctx, "", func(g store.Summary) error {
		got = append(got, fmt.Sprintf("%s rev=%t members=%d", g.Key, g.StateRev != 0, g.Members))
		if g.Key.Name == "a" && g.StateRev != rev {
			t.Errorf("state revision of ns/a = %d; want %d", g.StateRev, rev)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "ns/a rev=true members=0, ns/b rev=true members=3"
	if strings.Join(got, ", ") != want {
		t.Fatalf("ScanGroups: %s; want %s", strings.Join(got, ", "), want)
	}
}

func TestListKeysPage(t *testing.T) {
	s, ctx := newStore(t)
	var all []string
	for _, ns := range []string{"a", "b"} {
		for i := range 7 {
			k := podapi.Key{Namespace: ns, Name: fmt.Sprintf("g%d", i)}
			// Members of varying number, so that groups span batches.
			ids := make([]string, i)
			for j := range ids {
				ids[j] = fmt.Sprintf("m%d", j)
			}
			create(t, ctx, s, k, rendezvous.Running, ids...)
			all = append(all, k.String())
		}
	}
	// A member record without a state is no group.
	lease, err := s.GrantLease(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.PutMember(ctx, podapi.Key{Namespace: "a", Name: "g3x"}, rendezvous.Member{ID: "m"}, lease, -1); err != nil {
		t.Fatal(err)
	}

	pages := func(ns string, limit int) ([]string, int) {
		var got []string
		after, n := "", 0
		for {
			keys, next, err := s.ListKeysPage(ctx, ns, after, limit)
			if err != nil {
				t.Fatalf("ListKeysPage(%q, %q, %d): %v", ns, after, limit, err)
			}
			n++
			if len(keys) > limit {
				t.Fatalf("ListKeysPage(%q, %q, %d) returned %d keys", ns, after, limit, len(keys))
			}
			for _, k := range keys {
				got = append(got, k.String())
			}
			if next == "" {
				return got, n
			}
			if n > 100 {
				t.Fatalf("ListKeysPage(%q, _, %d): more than 100 pages", ns, limit)
			}
			after = next
		}
	}
	for _, limit := range []int{1, 3, 7, 14, 100} {
		got, n := pages("", limit)
		if strings.Join(got, " ") != strings.Join(all, " ") {
			t.Errorf("all namespaces, pages of %d: %v; want %v", limit, got, all)
		}
		// next is empty exactly on the last page: no empty page at the end.
		if want := (len(all) + limit - 1) / limit; n != want {
			t.Errorf("all namespaces, pages of %d: %d pages; want %d", limit, n, want)
		}
		got, _ = pages("b", limit)
		if strings.Join(got, " ") != strings.Join(all[7:], " ") {
			t.Errorf("namespace b, pages of %d: %v; want %v", limit, got, all[7:])
		}
	}

	for _, c := range []struct {
		ns, after string
		limit     int
	}{
		{"", "", 0},
		{"", "noslash", 10},
		{"", "a/b/c", 10},
		{"", "/b", 10},
		{"a", "b/g1", 10},
	} {
		if _, _, err := s.ListKeysPage(ctx, c.ns, c.after, c.limit); err == nil {
			t.Errorf("ListKeysPage(%q, %q, %d): no error", c.ns, c.after, c.limit)
		}
	}
}

func TestPutMemberOnAnExpiredLeaseSaysSo(t *testing.T) {
	s, ctx := newStore(t)
	k := podapi.Key{Namespace: "ns", Name: "lease-gone"}
	lease, err := s.GrantLease(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client().Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.PutMember(ctx, k, rendezvous.Member{ID: "m0", Address: "127.0.0.2"}, lease, -1)
	if !errors.Is(err, store.ErrLeaseGone) {
		t.Fatalf("PutMember on a revoked lease: %v, want ErrLeaseGone", err)
	}
}
