package gossip_test

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/muster-dev/muster/agent/gossip"
)

// wait bounds every condition the tests wait for; memberlist converges in
// well under a second on loopback.
const wait = 20 * time.Second

func key(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

// lost records the peers a node's OnLost heard of.
type lost struct {
	mu    sync.Mutex
	names []string
}

func (l *lost) add(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.names = append(l.names, name)
}

func (l *lost) has(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.names {
		if n == name {
			return true
		}
	}
	return false
}

// start starts a node named name on 127.0.0.1 using keys (in order; none:
// only the random key the node starts with), closed when the test ends.
func start(t *testing.T, name string, l *lost, keys ...[]byte) *gossip.Node {
	t.Helper()
	c := gossip.Config{Name: name, BindAddr: "127.0.0.1"}
	if l != nil {
		c.OnLost = l.add
	}
	n, err := gossip.Start(c)
	if err != nil {
		t.Fatalf("Start(%s): %v", name, err)
	}
	t.Cleanup(n.Close)
	for _, k := range keys {
		if err := n.UseKey(k); err != nil {
			t.Fatalf("%s: UseKey: %v", name, err)
		}
	}
	return n
}

func addr(n *gossip.Node) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.Port())) }

// eventually waits until cond holds, failing after wait with what it
// last saw.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s; last: %s", what, wait, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitMembers waits until every node sees want members.
func waitMembers(t *testing.T, want int, nodes ...*gossip.Node) {
	t.Helper()
	eventually(t, "every node sees "+strconv.Itoa(want)+" members", func() (bool, string) {
		got := ""
		ok := true
		for _, n := range nodes {
			m := n.Members()
			got += strconv.Itoa(m) + " "
			ok = ok && m == want
		}
		return ok, "members seen: " + got
	})
}

func TestNodesWithTheGroupKeyMeet(t *testing.T) {
	k := key(1)
	a := start(t, "a", nil, k)
	b := start(t, "b", nil, k)
	if err := b.Join([]string{addr(a)}); err != nil {
		t.Fatalf("b joins a with the same key: %v", err)
	}
	waitMembers(t, 2, a, b)
	// Joining nobody is not an error: the first member of a group has no
	// peers yet.
	if err := a.Join(nil); err != nil {
		t.Errorf("Join(nil) = %v, want nil", err)
	}
}

func TestStrangersAreNotAdmitted(t *testing.T) {
	k := key(1)
	tests := []struct {
		name string
		keys [][]byte // the stranger's keys
	}{
		{name: "never got a key"},
		{name: "another group's key", keys: [][]byte{key(9)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := start(t, "a", nil, k)
			b := start(t, "b", nil, k)
			if err := b.Join([]string{addr(a)}); err != nil {
				t.Fatalf("b joins a: %v", err)
			}
			waitMembers(t, 2, a, b)
			s := start(t, "stranger", nil, tc.keys...)
			// memberlist's Join is a synchronous push/pull over TCP: the
			// member cannot decrypt the stranger's state and hangs up, so
			// the stranger learns nothing and Join says so.
			if err := s.Join([]string{addr(a), addr(b)}); err == nil {
				t.Fatalf("a stranger joined the group: Join = nil, want an error")
			}
			if n := s.Members(); n != 1 {
				t.Errorf("the stranger sees %d members, want only itself", n)
			}
			// Nor can a member be talked into joining the stranger.
			if err := a.Join([]string{addr(s)}); err == nil {
				t.Errorf("a member joined the stranger: Join = nil, want an error")
			}
			for name, n := range map[string]*gossip.Node{"a": a, "b": b} {
				if m := n.Members(); m > 2 {
					t.Errorf("%s sees %d members after the stranger tried, want at most 2", name, m)
				}
			}
			if n := s.Members(); n != 1 {
				t.Errorf("the stranger sees %d members, want only itself", n)
			}
		})
	}
}

func TestKeyRotation(t *testing.T) {
	k1, k2, k3 := key(1), key(2), key(3)
	la, lb := &lost{}, &lost{}
	a := start(t, "a", la, k1)
	b := start(t, "b", lb, k1)
	if err := b.Join([]string{addr(a)}); err != nil {
		t.Fatalf("b joins a: %v", err)
	}
	waitMembers(t, 2, a, b)

	// A new generation: both move to k2, one after the other (the other
	// still understands k1 meanwhile).
	for _, n := range []*gossip.Node{a, b} {
		if err := n.UseKey(k2); err != nil {
			t.Fatalf("UseKey(k2): %v", err)
		}
	}
	// Gossip now runs on k2: a node that has only k2 meets both, b
	// learning of it from a's gossip.
	c := start(t, "c", nil, k2)
	if err := c.Join([]string{addr(a)}); err != nil {
		t.Fatalf("a node with only the new key joins after the rotation: %v", err)
	}
	waitMembers(t, 3, a, b, c)

	// Two generations on, k1 is dropped: a node that kept only k1 is a
	// stranger.
	for _, n := range []*gossip.Node{a, b, c} {
		if err := n.UseKey(k3); err != nil {
			t.Fatalf("UseKey(k3): %v", err)
		}
	}
	old := start(t, "old", nil, k1)
	if err := old.Join([]string{addr(a)}); err == nil {
		t.Fatalf("a node with only a dropped key joined: Join = nil, want an error")
	}
	if n := old.Members(); n != 1 {
		t.Errorf("the node with the dropped key sees %d members, want only itself", n)
	}
	waitMembers(t, 3, a, b, c)
	for name, l := range map[string]*lost{"a": la, "b": lb} {
		if l.has("old") {
			t.Errorf("%s heard of the node with the dropped key", name)
		}
	}
}

func TestUseKey(t *testing.T) {
	k1, k2 := key(1), key(2)
	t.Run("the same key twice is a no-op", func(t *testing.T) {
		a := start(t, "a", nil, k1)
		if err := a.UseKey(k1); err != nil {
			t.Fatalf("UseKey(k1) again: %v", err)
		}
	})
	t.Run("bad key sizes are refused", func(t *testing.T) {
		a := start(t, "a", nil)
		for _, n := range []int{0, 8, 31, 33} {
			if err := a.UseKey(make([]byte, n)); err == nil {
				t.Errorf("UseKey of %d bytes = nil, want an error", n)
			}
		}
	})
	t.Run("back to the previous key", func(t *testing.T) {
		// Assignments of two quick generations are handled by concurrent
		// goroutines, so the older key may come last; it is still in the
		// ring and using it again must work, and gossip go on.
		a := start(t, "a", nil, k1, k2)
		if err := a.UseKey(k1); err != nil {
			t.Fatalf("UseKey(k1) after k2: %v", err)
		}
		b := start(t, "b", nil, k1)
		if err := b.Join([]string{addr(a)}); err != nil {
			t.Fatalf("a node with k1 joins one that went back to k1: %v", err)
		}
		waitMembers(t, 2, a, b)
		// The ring still holds both, and moves on cleanly.
		if err := a.UseKey(k2); err != nil {
			t.Fatalf("UseKey(k2) once more: %v", err)
		}
		if err := b.UseKey(k2); err != nil {
			t.Fatalf("b: UseKey(k2): %v", err)
		}
		c := start(t, "c", nil, k2)
		if err := c.Join([]string{addr(a)}); err != nil {
			t.Fatalf("a node with k2 joins: %v", err)
		}
		waitMembers(t, 3, a, b, c)
	})
}

func TestOnLostHearsAPeerThatLeaves(t *testing.T) {
	k := key(1)
	la := &lost{}
	a := start(t, "a", la, k)
	b := start(t, "b", nil, k)
	if err := b.Join([]string{addr(a)}); err != nil {
		t.Fatalf("b joins a: %v", err)
	}
	waitMembers(t, 2, a, b)
	b.Close()
	b.Close() // idempotent
	eventually(t, "a hears that b left", func() (bool, string) {
		return la.has("b") && a.Members() == 1, "a sees " + strconv.Itoa(a.Members()) + " members"
	})
	if la.has("a") {
		t.Errorf("a's OnLost heard of a itself")
	}
}

// TestJoinRetryWaitsForTheSeedToTakeTheKey: a member whose assignment came
// first joins a seed that does not have the generation's key yet; the
// join is refused until the seed takes it, then succeeds.
func TestJoinRetryWaitsForTheSeedToTakeTheKey(t *testing.T) {
	seed := start(t, "seed", nil, key(1))
	late := start(t, "late", nil, key(2))
	if err := late.Join([]string{addr(seed)}); err == nil {
		t.Fatal("a join the seed cannot decrypt succeeded")
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		seed.UseKey(key(2))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := late.JoinRetry(ctx, []string{addr(seed)}, func() bool { return true }); err != nil {
		t.Fatalf("JoinRetry after the seed took the key: %v", err)
	}
	waitMembers(t, 2, seed, late)
	// A join no longer wanted is not retried.
	stranger := start(t, "stranger", nil, key(3))
	tries := 0
	err := stranger.JoinRetry(ctx, []string{addr(seed)}, func() bool { tries++; return false })
	if err == nil || tries != 1 {
		t.Fatalf("unwanted join: err %v after %d tries, want an error after 1", err, tries)
	}
}
