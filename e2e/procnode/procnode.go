// Package procnode is a cluster.NodeBackend whose pods really run: every
// container's command is started as a local process on this machine. It is
// built on virtual-kubelet: per node, vk's node controller (node status and
// lease) and pod controller, with this package's provider behind them, all
// as goroutines of the process that started the cluster.
//
//	nodes := procnode.New(procnode.DefaultConfig("bin"))
//	cfg.Nodes = nodes // a cluster.Config
//
// or `cluster up --node-backend process` (`make cluster NODE_BACKEND=process`).
//
// What a pod gets, as from a kubelet:
//
//   - Its own loopback address from Config.PodCIDR (default 127.10.0.0/16,
//     never 127.0.0.1) as status.podIP; status.hostIP is 127.0.0.1. The
//     process is not confined to it: all pods share the host's network
//     namespace, so a pod should bind its pod IP (from the downward API),
//     not 0.0.0.0, or two pods on the same port collide.
//   - A clean environment: PATH (the launcher's), HOSTNAME (the pod name),
//     HOME (the pod's dir), then the container's env and envFrom resolved as
//     the kubelet does (downward API fieldRef and resourceFieldRef,
//     ConfigMap and Secret keys read through the API, $(VAR) expansion in
//     env values, command and args). Nothing of the launcher's environment
//     leaks in. No service links.
//   - Volumes: emptyDir as a directory in the pod's dir; configMap, secret
//     and downwardAPI volumes as files written once when the pod starts
//     (not refreshed); projected volumes likewise, but for their
//     serviceAccountToken sources: tokens from the TokenRequest API, bound
//     to the pod and refreshed as the kubelet refreshes them (token.go);
//     any other volume type is an empty directory.
//   - Init containers in order, each to completion, then all containers;
//     restartPolicy with restart counts and a capped exponential back-off;
//     startup, readiness and liveness probes (HTTP GET, TCP, gRPC against
//     the pod IP unless a host is set; exec as a host process); the
//     PodScheduled, Initialized, ContainersReady and Ready conditions, Ready
//     honouring spec.readinessGates (conditions others set are kept).
//   - Logs: each container's stdout and stderr in CRI format under the pod
//     dir, served through the kubelet API (kubectl logs, -f, --previous,
//     --tail, --since, --timestamps) over TLS with a cert from the cluster CA.
//   - Deletion: SIGTERM to each container's process group, SIGKILL after the
//     grace period; then the pod's dir goes and the Pod object is removed.
//
// Images are not pulled and mostly ignored: the command runs on the host. The
// exception is Config.AgentImage (default muster/agent, any tag): for a
// container of that image, argv[0] is replaced by Config.AgentBin, the host
// path of muster's agent binary (args follow; with no command, the agent
// binary is the entrypoint).
//
// Paths: a container sees the host filesystem, not an image's, so container
// paths under a volume are rewritten to the volume's host directory. Any argv
// element (after expansion), env value and workingDir that equals a
// volumeMount's mountPath or starts with mountPath + "/" is rewritten to the
// volume's host path (plus subPath), the longest mountPath winning: with an
// emptyDir mounted at /muster/bin, "/muster/bin/agent" becomes
// "<pod dir>/volumes/<volume>/agent". Only leading paths are rewritten
// ("--out=/muster/bin/x" is left alone), and programs that open fixed
// container paths themselves (/var/run/secrets/...) do not find them: give
// them the path in an env var or an argument of its own. An unset
// workingDir is the pod's dir.
//
// Layout of a pod's dir (<cluster state dir>/procnode/pods/<ns>_<name>_<uid>):
//
//	volumes/<volume>/          emptyDir, configMap, secret, downwardAPI, projected
//	logs/<container>/<n>.log   the n-th run of the container (restart count)
//
// Resources: node capacity and allocatable are the NodeShape's; requests and
// limits are not enforced on the processes.
//
// Not done: exec, attach and port-forward (the kubelet API answers 501),
// native sidecars (init containers with restartPolicy Always are run as
// ordinary init containers), image pull policies, security contexts,
// resource enforcement, clusterTrustBundle and podCertificate projections.
// A process that leaves its process group (setsid) escapes the termination
// of its container.
package procnode

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/muster-dev/muster/e2e/cluster"
)

// Config configures the process nodes. DefaultConfig fills every field.
type Config struct {
	// Shape is the set of nodes (names, capacity, racks), as for kwok.
	Shape cluster.NodeShape
	// Network is where pods live: "netns" (a network namespace of the
	// cluster's own with PodCIDR inside it: addresses EndpointSlices accept;
	// needs root and iproute2) or "loopback" (host network, PodCIDR within
	// 127.0.0.0/8).
	Network string
	// PodCIDR is the range pod IPs come from; with loopback it must lie within
	// 127.0.0.0/8. 127.0.0.1 and the range's first and last addresses are
	// never handed out.
	PodCIDR string
	// AgentImage is muster's agent image: containers of this repository
	// (with any tag or digest) run AgentBin.
	AgentImage string
	// AgentBin is the host path of the agent binary. It is checked when a
	// container of AgentImage starts, not before: clusters whose pods never
	// run the agent do not need it.
	AgentBin string
	// Dir holds the pods' dirs; empty means <cluster state dir>/procnode.
	Dir string
	// BackoffInitial and BackoffMax bound the delay before a failed
	// container restarts; it doubles from BackoffInitial on each restart up
	// to BackoffMax. The kubelet uses 10s and 5m; the defaults here are
	// shorter so that tests of crash loops finish sooner.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// LeaseDurationSeconds of the node leases.
	LeaseDurationSeconds int32
}

// DefaultConfig is the default node shape (4 nodes of 8 GPUs, two per
// rack), pods in 127.10.0.0/16 and the agent image muster/agent mapped to
// <binDir>/agent.
func DefaultConfig(binDir string) Config {
	if abs, err := filepath.Abs(binDir); err == nil {
		binDir = abs
	}
	return Config{
		Shape:                cluster.DefaultNodeShape(),
		PodCIDR:              "127.10.0.0/16",
		Network:              "loopback",
		AgentImage:           "muster/agent",
		AgentBin:             filepath.Join(binDir, "agent"),
		BackoffInitial:       time.Second,
		BackoffMax:           30 * time.Second,
		LeaseDurationSeconds: 40,
	}
}

// WithPodNetwork switches cfg to pods in a network namespace of their own
// with addresses from a 10.x.0.0/16 range no route of this host uses yet
// (10.244.0.0/16 when free), when this machine allows it (root and
// iproute2); it reports whether it did.
func (cfg *Config) WithPodNetwork() bool {
	if !netnsAvailable() {
		return false
	}
	cfg.Network, cfg.PodCIDR = "netns", freePodRange()
	return true
}

// Gateway is the host's address in the pods' network (where pods reach
// services of the host, such as the coordinator); "" with loopback pods.
func (n *Nodes) Gateway() string {
	if n.cfg.Network != "netns" {
		return ""
	}
	p, err := netip.ParsePrefix(n.cfg.PodCIDR)
	if err != nil {
		return ""
	}
	return p.Masked().Addr().Next().String()
}

// Nodes is the backend: a cluster.NodeBackend. Create it with New.
type Nodes struct {
	cfg Config
	net *podNetwork

	mu     sync.Mutex
	names  []string
	nodes  []*node
	cancel context.CancelFunc
	ips    *ipPool
}

var _ cluster.NodeBackend = (*Nodes)(nil)

// New returns process nodes with cfg; zero fields take DefaultConfig's
// values (AgentBin defaults to bin/agent relative to the working
// directory).
func New(cfg Config) *Nodes {
	def := DefaultConfig("bin")
	if cfg.Shape.Count == 0 && cfg.Shape.Prefix == "" {
		cfg.Shape = def.Shape
	}
	if cfg.Network == "" {
		cfg.Network = def.Network
	}
	if cfg.PodCIDR == "" {
		cfg.PodCIDR = def.PodCIDR
	}
	if cfg.AgentImage == "" {
		cfg.AgentImage = def.AgentImage
	}
	if cfg.AgentBin == "" {
		cfg.AgentBin = def.AgentBin
	}
	if cfg.BackoffInitial <= 0 {
		cfg.BackoffInitial = def.BackoffInitial
	}
	if cfg.BackoffMax < cfg.BackoffInitial {
		cfg.BackoffMax = max(def.BackoffMax, cfg.BackoffInitial)
	}
	if cfg.LeaseDurationSeconds <= 0 {
		cfg.LeaseDurationSeconds = def.LeaseDurationSeconds
	}
	return &Nodes{cfg: cfg}
}

// Config is the configuration in use (defaults filled in).
func (n *Nodes) Config() Config { return n.cfg }

// Validate checks the shape and the pod range before anything starts.
func (n *Nodes) Validate() error {
	if _, err := n.cfg.Shape.Nodes(); err != nil {
		return err
	}
	if _, err := newIPPool(n.cfg.PodCIDR, n.cfg.Network == "netns"); err != nil {
		return err
	}
	if repo := imageRepository(n.cfg.AgentImage); repo == "" {
		return fmt.Errorf("agent image %q: no repository name", n.cfg.AgentImage)
	}
	return nil
}

// NodeNames lists the nodes (empty before Start).
func (n *Nodes) NodeNames() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.names
}

// Start registers the nodes and starts, per node, the kubelet API server
// and vk's node and pod controllers. It returns once every pod controller
// is ready; the cluster then waits for the nodes to turn Ready.
func (n *Nodes) Start(ctx context.Context, c *cluster.Cluster) error {
	if err := n.Validate(); err != nil {
		return err
	}
	objs, err := n.cfg.Shape.Nodes()
	if err != nil {
		return err
	}
	ips, err := newIPPool(n.cfg.PodCIDR, n.cfg.Network == "netns")
	if err != nil {
		return err
	}
	dir := n.cfg.Dir
	if dir == "" {
		dir = filepath.Join(c.StateDir(), "procnode")
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return fmt.Errorf("procnode dir: %w", err)
	}
	if n.cfg.Network == "netns" {
		if ips.net, err = setupPodNetwork(dir, ips.prefix); err != nil {
			return err
		}
		n.mu.Lock()
		n.net = ips.net
		n.mu.Unlock()
		c.Logger().Info("pod network namespace", "netns", ips.net.name, "pod-cidr", ips.prefix.String(), "gateway", ips.net.gateway.String())
	}
	// Pods of an earlier run are long gone (their processes died with it).
	if err := os.RemoveAll(filepath.Join(dir, "pods")); err != nil {
		return fmt.Errorf("wipe old pod dirs: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "pods"), 0o755); err != nil {
		return fmt.Errorf("create pod dir: %w", err)
	}

	// The nodes outlive Start's context: they run until Stop.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n.mu.Lock()
	n.cancel, n.ips = cancel, ips
	n.mu.Unlock()

	c.Logger().Info("starting process nodes", "count", len(objs), "pod-cidr", n.cfg.PodCIDR, "dir", dir)
	for _, obj := range objs {
		nd, err := startNode(runCtx, c, n.cfg, obj, ips, filepath.Join(dir, "pods"))
		if nd != nil {
			n.mu.Lock()
			n.nodes = append(n.nodes, nd)
			n.mu.Unlock()
		}
		if err != nil {
			return fmt.Errorf("node %s: %w", obj.Name, err)
		}
	}
	for _, nd := range n.nodes {
		if err := nd.waitReady(ctx); err != nil {
			return fmt.Errorf("node %s: %w", nd.name, err)
		}
	}
	names := make([]string, len(objs))
	for i, o := range objs {
		names[i] = o.Name
	}
	n.mu.Lock()
	n.names = names
	n.mu.Unlock()
	return nil
}

// Stop kills every process of every pod (SIGKILL to each container's
// process group: the cluster is going away, there is nobody to be graceful
// for), waits until they are reaped, and stops the controllers and the
// kubelet API servers. Pod objects are left as they are. It returns an
// error naming any process that is still there.
func (n *Nodes) Stop() error {
	n.mu.Lock()
	nodes := n.nodes
	cancel := n.cancel
	n.mu.Unlock()
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, nd := range nodes {
		wg.Go(func() {
			if err := nd.stop(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("node %s: %w", nd.name, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if cancel != nil {
		cancel()
	}
	for _, nd := range nodes {
		nd.wait()
	}
	n.mu.Lock()
	nw := n.net
	n.net = nil
	n.mu.Unlock()
	if nw != nil {
		if err := nw.teardown(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// PodDir is the host directory of a pod this backend runs, or "" if no node
// of it runs the pod.
func (n *Nodes) PodDir(namespace, name string) string {
	n.mu.Lock()
	nodes := n.nodes
	n.mu.Unlock()
	for _, nd := range nodes {
		if p := nd.provider.lookup(namespace, name); p != nil {
			return p.dir
		}
	}
	return ""
}

// ipPool hands out pod IPs from a loopback range, shared by all nodes.
type ipPool struct {
	mu     sync.Mutex
	prefix netip.Prefix
	next   netip.Addr
	used   map[netip.Addr]bool
	// net, when set, is the pods' network namespace: addresses are added
	// to it and taken away, and its gateway is never handed out.
	net *podNetwork
}

func newIPPool(cidr string, netns bool) (*ipPool, error) {
	prefix, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("pod CIDR %q: %w", cidr, err)
	}
	prefix = prefix.Masked()
	loop := netip.MustParsePrefix("127.0.0.0/8")
	if !prefix.Addr().Is4() || (!netns && (!loop.Contains(prefix.Addr()) || prefix.Bits() < loop.Bits())) {
		return nil, fmt.Errorf("pod CIDR %q: must lie within 127.0.0.0/8 (nothing else is ever a target here), unless pods get a network namespace (Network: netns)", cidr)
	}
	if prefix.Bits() > 29 {
		return nil, fmt.Errorf("pod CIDR %q: too small", cidr)
	}
	return &ipPool{prefix: prefix, next: prefix.Addr().Next(), used: map[netip.Addr]bool{}}, nil
}

// allocate returns a free address, round robin, so that a released address
// is not reused at once (a late packet to a dead pod reaches nobody).
func (p *ipPool) allocate() (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := p.next
	for {
		a := p.next
		p.next = p.next.Next()
		if !p.prefix.Contains(p.next) {
			p.next = p.prefix.Addr().Next()
		}
		last := !p.prefix.Contains(a.Next())
		gateway := p.net != nil && a == p.net.gateway
		if p.prefix.Contains(a) && a != p.prefix.Addr() && !last && a != netip.MustParseAddr("127.0.0.1") && !gateway && !p.used[a] {
			if p.net != nil {
				if err := p.net.addAddr(a); err != nil {
					return netip.Addr{}, err
				}
			}
			p.used[a] = true
			return a, nil
		}
		if p.next == start {
			return netip.Addr{}, fmt.Errorf("pod CIDR %s: no free address", p.prefix)
		}
	}
}

func (p *ipPool) release(a netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.net != nil && p.used[a] {
		_ = p.net.delAddr(a)
	}
	delete(p.used, a)
}
