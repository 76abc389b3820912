// Package gossip lets a group's agents watch each other directly, with
// hashicorp/memberlist, so that a member whose pod or host vanishes, or
// that is cut off, is noticed by its peers in well under a second rather
// than when its etcd lease runs out. Gossip only makes the coordinator hear
// sooner: a peer that memberlist declares dead is reported, and the
// coordinator confirms before it acts (see the coordinator's ReportPeerLost).
package gossip

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Config describes one member's gossip node.
type Config struct {
	// Name is the member id; BindAddr the member's address.
	Name     string
	BindAddr string
	// Port to bind (TCP and UDP); 0 picks a free one.
	Port int
	// GroupSize is how many members the group has (0: small). Big groups
	// probe less often (see memberlistConfig).
	GroupSize int
	// OnLost is called, from memberlist's goroutine, with the name of a peer
	// memberlist declared dead after its suspicion period.
	OnLost func(name string)
}

// memberlistConfig is memberlist's LAN configuration made quicker for a
// group on one fabric, but with Lifeguard's slack kept: probe every 200ms
// (100ms timeout, stretched up to 8x by memberlist's awareness when this
// node itself is slow), and a suspicion period that starts at
// SuspicionMaxTimeoutMult x the minimum and falls to the minimum
// (SuspicionMult x log10(n) probe intervals) only as other members
// confirm the suspicion on their own. A member that is really gone is
// suspected by everyone at once and declared dead within about a second;
// a member that one busy peer failed to hear from refutes the suspicion
// long before. (Probing every 100ms with no confirmation needed made 64
// agents on one busy host accuse each other faster than they could
// refute, and their reports starved the coordinator.) A killed agent is
// noticed sooner than any of this: the coordinator sees its stream close
// and finds its gossip port closed.
func memberlistConfig(c Config, port int) *memberlist.Config {
	mc := memberlist.DefaultLANConfig()
	mc.Name = c.Name
	mc.BindAddr, mc.BindPort = c.BindAddr, port
	mc.AdvertiseAddr, mc.AdvertisePort = c.BindAddr, port
	// Each member probes one peer per interval, so a dead member is
	// probed about once per interval whatever the group's size, while
	// the group's packets grow with it: past 16 members the interval
	// grows too (to at most 1s at 80), keeping the group's own traffic,
	// and its CPU on a shared host, that of 16 members.
	scale := time.Duration(min(5, max(1, (c.GroupSize+15)/16)))
	mc.ProbeInterval = scale * 200 * time.Millisecond
	mc.ProbeTimeout = scale * 100 * time.Millisecond
	mc.SuspicionMult = 3
	mc.SuspicionMaxTimeoutMult = 6
	mc.GossipInterval = scale * 100 * time.Millisecond
	mc.GossipToTheDeadTime = 2 * time.Second
	mc.PushPullInterval = 5 * time.Second
	mc.TCPTimeout = time.Second
	// Messages are a few hundred bytes on a LAN: compressing each (LZW,
	// with a fresh table per message) was a quarter of an idle node's CPU.
	mc.EnableCompression = false
	mc.Logger = log.New(io.Discard, "", 0)
	return mc
}

// Node is a running gossip member.
type Node struct {
	ml      *memberlist.Memberlist
	port    int
	keyring *memberlist.Keyring

	mu     sync.Mutex
	closed bool
	keys   [][]byte // oldest first; the last is in use
}

// Start creates the member's node.
func Start(c Config) (*Node, error) {
	port := c.Port
	if port == 0 {
		// memberlist needs the same port free for TCP and UDP.
		var err error
		if port, err = freePort(c.BindAddr); err != nil {
			return nil, err
		}
	}
	mc := memberlistConfig(c, port)
	mc.Events = &events{self: c.Name, onLost: c.OnLost}
	// Encryption is on from the first packet, with a key nobody else has
	// until the coordinator hands out the group's (UseKey): a stranger who
	// finds the port learns nothing and is not admitted. memberlist cannot
	// turn encryption on after Create.
	first := make([]byte, 32)
	if _, err := rand.Read(first); err != nil {
		return nil, err
	}
	kr, err := memberlist.NewKeyring(nil, first)
	if err != nil {
		return nil, fmt.Errorf("gossip keyring: %w", err)
	}
	mc.Keyring = kr
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("gossip on %s:%d: %w", c.BindAddr, port, err)
	}
	return &Node{ml: ml, port: port, keyring: kr, keys: [][]byte{first}}, nil
}

// UseKey makes key (16, 24 or 32 bytes: the group's key of a generation)
// the one gossip encrypts with. The previous key still decrypts, so that
// peers that have not yet heard of the new generation are understood
// meanwhile; older keys are dropped.
func (n *Node) UseKey(key []byte) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.keys) > 0 && bytes.Equal(n.keys[len(n.keys)-1], key) {
		return nil
	}
	key = bytes.Clone(key) // the ring keeps it: not the caller's buffer
	if err := n.keyring.AddKey(key); err != nil {
		return fmt.Errorf("gossip key: %w", err)
	}
	if err := n.keyring.UseKey(key); err != nil {
		return fmt.Errorf("gossip key: %w", err)
	}
	// A key still in the ring (the previous generation's, when two
	// generations' assignments arrive out of order) moves to the end
	// rather than appearing twice: dropping its older copy would remove
	// the key now in use, which memberlist refuses.
	n.keys = slices.DeleteFunc(n.keys, func(k []byte) bool { return bytes.Equal(k, key) })
	n.keys = append(n.keys, key)
	for len(n.keys) > 2 {
		if err := n.keyring.RemoveKey(n.keys[0]); err != nil {
			return fmt.Errorf("gossip key: %w", err)
		}
		n.keys = n.keys[1:]
	}
	return nil
}

// Port is the node's gossip port.
func (n *Node) Port() int { return n.port }

// Join contacts peers (host:port); it succeeds if any answers.
func (n *Node) Join(peers []string) error {
	if len(peers) == 0 {
		return nil
	}
	if _, err := n.ml.Join(peers); err != nil {
		return fmt.Errorf("gossip: join %v: %w", peers, err)
	}
	return nil
}

// JoinRetry is Join tried again, backing off (50ms doubling to 1s), until
// it succeeds, ctx ends or still() says the join is no longer wanted; it
// returns the last error. Peers that have not yet taken the key this node
// encrypts with cannot read its join until they do.
func (n *Node) JoinRetry(ctx context.Context, peers []string, still func() bool) error {
	for backoff := 50 * time.Millisecond; ; backoff = min(2*backoff, time.Second) {
		err := n.Join(peers)
		if err == nil || !still() {
			return err
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return err
		}
	}
}

// Members is how many live members the node sees, itself included.
func (n *Node) Members() int { return n.ml.NumMembers() }

// Close leaves the cluster quietly and stops the node.
func (n *Node) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.closed = true
	_ = n.ml.Leave(200 * time.Millisecond)
	_ = n.ml.Shutdown()
}

// events turns memberlist's node events into OnLost calls. A graceful
// leave (an agent that exits normally) is reported too: the coordinator
// tells a leave from a death by the member's record.
type events struct {
	self   string
	onLost func(string)
}

func (e *events) NotifyJoin(*memberlist.Node)   {}
func (e *events) NotifyUpdate(*memberlist.Node) {}
func (e *events) NotifyLeave(n *memberlist.Node) {
	if n.Name != e.self && e.onLost != nil {
		e.onLost(n.Name)
	}
}

func freePort(host string) (int, error) {
	for i := 0; i < 20; i++ {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, fmt.Errorf("gossip: pick a port on %s: %w", host, err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		u, err := net.ListenPacket("udp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err == nil {
			u.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("gossip: no port free for both TCP and UDP on %s", host)
}
