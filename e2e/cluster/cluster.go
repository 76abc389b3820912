// Package cluster runs a real Kubernetes control plane on one machine, for
// end-to-end tests, benchmarks and `make cluster`: etcd in-process
// (coordinator/embedetcd), kube-apiserver, kube-controller-manager and
// muster's scheduler (bin/scheduler) as child processes, and nodes from a
// NodeBackend (by default KwokNodes: kwok plays the kubelets).
//
// Everything listens on 127.0.0.1 on ports chosen free at start. Every
// child runs in its own process group and is stopped by Stop; if the
// launching process dies without calling Stop, the kernel kills the
// children (Pdeathsig).
//
// The control plane's processes are in controlplane.go, what the cluster
// writes to disk (state, credentials, kubeconfig) in state.go and pki.go,
// and what Start waits for in wait.go.
//
// Layout of Config.Dir:
//
//	kubeconfig            admin kubeconfig (certificates embedded)
//	logs/<name>.log       one log per child process, truncated at start
//	cluster/state.json    launcher pid, addresses, child pids (see State)
//	cluster/pki/          CA, serving and client certs, service-account key
//	cluster/etcd/         etcd's data (wiped at start)
//	cluster/*.yaml        the scheduler's and kwok's generated configs
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/muster-dev/muster/coordinator/embedetcd"
	"github.com/muster-dev/muster/pki"
)

// Binaries are the control-plane programs. Scheduler may be empty: then no
// scheduler runs (a benchmark that brings its own).
type Binaries struct {
	APIServer         string
	ControllerManager string
	Scheduler         string
	// Coordinator is muster's coordinator, started with its webhook
	// registered; "" runs none.
	Coordinator string
}

// Config describes a cluster. DefaultConfig fills every field.
type Config struct {
	// Dir holds the kubeconfig, logs and state (see the package doc).
	// Start wipes the state it owns there, never anything else.
	Dir      string
	Binaries Binaries
	// SchedulerConfig is a KubeSchedulerConfiguration template (muster's is
	// deploy/scheduler/config.yaml); Start writes a copy with
	// clientConnection.kubeconfig filled in. Empty: a minimal configuration
	// with the default-scheduler profile only.
	SchedulerConfig string
	// FeatureGates go to the apiserver, kcm and the scheduler alike.
	FeatureGates map[string]bool
	// RuntimeConfig is the apiserver's --runtime-config (API versions on top
	// of the defaults).
	RuntimeConfig string
	// ServiceCIDR is --service-cluster-ip-range. ClusterIPs are handed out
	// from it but nothing serves them (no kube-proxy): the cluster routes
	// the range nowhere (servicenet.go), and its first address is a SAN of
	// the apiserver's cert.
	ServiceCIDR string
	// CRDs are files of CustomResourceDefinitions to install once the
	// apiserver is ready and before the scheduler starts (muster's:
	// deploy/crds/), so plugins that look for them at start find them.
	CRDs []string
	// Nodes adds the nodes; nil means no nodes. If it has a method
	// Validate() error, Start calls it before starting anything.
	Nodes NodeBackend
	// Logger receives progress; nil means slog's default logger.
	Logger *slog.Logger
	// StartTimeout bounds Start; StopGrace is how long a component gets
	// between SIGTERM and SIGKILL.
	StartTimeout time.Duration
	StopGrace    time.Duration
}

// DefaultConfig is a cluster in dir with the binaries of binDir
// (kube-apiserver, kube-controller-manager, scheduler, kwok), Kubernetes
// 1.37's gang scheduling API switched on, and four kwok nodes of 8 GPUs in
// two racks.
func DefaultConfig(dir, binDir string) Config {
	return Config{
		Dir: dir,
		Binaries: Binaries{
			APIServer:         filepath.Join(binDir, "kube-apiserver"),
			ControllerManager: filepath.Join(binDir, "kube-controller-manager"),
			Scheduler:         filepath.Join(binDir, "scheduler"),
		},
		// Workload/PodGroup (scheduling.k8s.io/v1beta1) and the scheduler's
		// gangscheduling and topologyaware plugins; off by default in 1.37.
		FeatureGates:  map[string]bool{"GenericWorkload": true, "TopologyAwareWorkloadScheduling": true},
		RuntimeConfig: "scheduling.k8s.io/v1beta1=true",
		ServiceCIDR:   "10.96.0.0/16",
		Nodes:         &KwokNodes{Shape: DefaultNodeShape(), Bin: filepath.Join(binDir, "kwok")},
		StopGrace:     10 * time.Second,
	}
}

// validate catches what would otherwise fail only after the control plane
// is up: missing binaries and a node backend's bad settings.
func (cfg Config) validate() error {
	for _, b := range []struct{ name, path string }{
		{"kube-apiserver", cfg.Binaries.APIServer},
		{"kube-controller-manager", cfg.Binaries.ControllerManager},
		{"scheduler", cfg.Binaries.Scheduler},
	} {
		if b.path == "" && b.name == "scheduler" {
			continue
		}
		if _, err := os.Stat(b.path); err != nil {
			return fmt.Errorf("%s binary: %w (make kube-bins builds it)", b.name, err)
		}
	}
	if err := validateCoordinator(cfg); err != nil {
		return err
	}
	if v, ok := cfg.Nodes.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return fmt.Errorf("nodes: %w", err)
		}
	}
	return nil
}

// Cluster is a running control plane.
type Cluster struct {
	cfg      Config
	log      *slog.Logger
	stateDir string
	logDir   string

	certs       *certs
	svcRoute    *serviceRoute // the service range's blackhole route; nil without one
	etcd        *embedetcd.Server
	ports       controlPlanePorts
	apiserver   string // https://127.0.0.1:port
	coordinator string // host:port of muster's coordinator; "" without one
	scheduler   string // https://127.0.0.1:port of the scheduler's secure port; "" without one
	kubeconfig  string
	restConfig  *rest.Config
	clientset   *kubernetes.Clientset
	nodes       NodeBackend // set once its Start was called

	mu       sync.Mutex
	procs    []*Process
	stopping bool // Stop has begun: no new processes

	failOnce sync.Once
	failed   chan struct{}
	failErr  error

	stopOnce sync.Once
	stopErr  error
}

// Start brings the cluster up and returns once it can take work: the
// apiserver is ready, kcm and the scheduler are healthy, the default
// ServiceAccount exists, and every node is Ready and untainted. On failure
// everything started so far is stopped again.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Dir == "" {
		return nil, errors.New("cluster: Config.Dir is empty")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("cluster dir %q: %w", cfg.Dir, err)
	}
	cfg.Dir = dir
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 10 * time.Second
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 3 * time.Minute
		if k, ok := cfg.Nodes.(*KwokNodes); ok {
			// Hundreds of nodes take a while to create and to be untainted.
			cfg.StartTimeout += time.Duration(k.Shape.Count) * 100 * time.Millisecond
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	c := &Cluster{
		cfg:        cfg,
		log:        log,
		stateDir:   filepath.Join(dir, "cluster"),
		logDir:     filepath.Join(dir, "logs"),
		kubeconfig: filepath.Join(dir, "kubeconfig"),
		failed:     make(chan struct{}),
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	began := time.Now()
	if err := c.start(ctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (start timeout %s)", err, cfg.StartTimeout)
		}
		if stopErr := c.Stop(); stopErr != nil {
			err = errors.Join(err, stopErr)
		}
		return nil, fmt.Errorf("start cluster in %s: %w", dir, err)
	}
	log.Info("cluster ready", "took", time.Since(began).Round(100*time.Millisecond), "kubeconfig", c.kubeconfig, "apiserver", c.apiserver)
	return c, nil
}

// start runs the steps of Start in order; the first error ends it.
func (c *Cluster) start(ctx context.Context) error {
	if err := c.cfg.validate(); err != nil {
		return err
	}
	for _, step := range []func(context.Context) error{
		c.prepareDir,
		c.pickPorts,
		c.routeServiceRange,
		c.writeCredentials,
		c.loadClient,
		c.startEtcd,
		c.startAPIServer,
		c.installCRDs,
		c.startControllerManager,
		c.startScheduler,
		c.startNodes,
		// muster's namespace and its RBAC for people, as the chart's.
		c.installMusterRBAC,
		// After the nodes: pods in a network of their own reach the
		// coordinator at that network's gateway, which exists once the
		// nodes started.
		c.startCoordinator,
		c.waitUntilReady,
	} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	c.writeState()
	return nil
}

// startNodes starts the node backend, if there is one.
func (c *Cluster) startNodes(ctx context.Context) error {
	if c.cfg.Nodes == nil {
		return nil
	}
	c.nodes = c.cfg.Nodes
	if err := c.nodes.Start(ctx, c); err != nil {
		return fmt.Errorf("start nodes: %w", err)
	}
	return nil
}

func (c *Cluster) fail(err error) {
	c.failOnce.Do(func() {
		c.failErr = err
		c.log.Error("cluster component failed", "err", err)
		close(c.failed)
	})
}

// Failed is closed when a component exits without Stop having been
// called; Err then says which and why.
func (c *Cluster) Failed() <-chan struct{} { return c.failed }

// Err is the first unexpected exit of a component, or nil.
func (c *Cluster) Err() error {
	select {
	case <-c.failed:
		return c.failErr
	default:
		return nil
	}
}

// Stop stops the node backend and every child process (SIGTERM to each
// process group, SIGKILL after StopGrace), clients before the apiserver,
// then etcd. It returns an error if any process is still there afterwards.
// Safe to call more than once.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		c.mu.Lock()
		c.stopping = true
		procs := slices.Clone(c.procs)
		c.mu.Unlock()
		began := time.Now()
		var errs []error
		if c.nodes != nil {
			if err := c.nodes.Stop(); err != nil {
				errs = append(errs, fmt.Errorf("stop nodes: %w", err))
			}
		}
		// Everything but the apiserver at once: they are independent
		// clients, and kcm alone may take seconds to wind down.
		var wg sync.WaitGroup
		var api *Process
		for _, p := range procs {
			if p.Name == "kube-apiserver" {
				api = p
				continue
			}
			wg.Go(func() { p.Stop(c.cfg.StopGrace) })
		}
		wg.Wait()
		if api != nil {
			api.Stop(c.cfg.StopGrace)
		}
		if c.etcd != nil {
			c.etcd.Close()
		}
		c.svcRoute.remove()
		for _, p := range procs {
			if Alive(p.PID()) {
				errs = append(errs, fmt.Errorf("%s (pid %d) still running after stop", p.Name, p.PID()))
			}
		}
		if len(procs) > 0 || c.etcd != nil {
			c.log.Info("cluster stopped", "took", time.Since(began).Round(100*time.Millisecond))
		}
		c.stopErr = errors.Join(errs...)
		if c.stopErr == nil {
			_ = os.Remove(filepath.Join(c.stateDir, "state.json"))
		}
	})
	return c.stopErr
}

// Kubeconfig is the path of the admin kubeconfig.
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// RESTConfig is a copy of the admin client configuration (500 QPS).
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restConfig) }

// SchedulerURL is the scheduler's secure endpoint (/metrics, /readyz),
// reachable with the admin credentials of RESTConfig; "" without a
// scheduler.
func (c *Cluster) SchedulerURL() string { return c.scheduler }

// Clientset is an admin clientset.
func (c *Cluster) Clientset() *kubernetes.Clientset { return c.clientset }

// APIServer is the apiserver's URL (https://127.0.0.1:port).
func (c *Cluster) APIServer() string { return c.apiserver }

// EtcdURL is the embedded etcd's client URL.
func (c *Cluster) EtcdURL() string { return c.etcd.ClientURL }

// Dir is the cluster's directory (absolute).
func (c *Cluster) Dir() string { return c.cfg.Dir }

// StateDir is where the cluster keeps generated files (<Dir>/cluster); a
// node backend may put its own there.
func (c *Cluster) StateDir() string { return c.stateDir }

// CAFile is the cluster CA certificate; CAKeyFile its key (a node backend
// may sign kubelet serving certs with it).
func (c *Cluster) CAFile() string    { return c.certs.caCert }
func (c *Cluster) CAKeyFile() string { return c.certs.caKey }

// IssueServingCert writes a new key and a TLS serving certificate for the
// given names and addresses, signed by the cluster CA, into the cluster's
// pki dir as <name>.crt and <name>.key; a node backend serves its kubelet
// API with one (the apiserver trusts the cluster CA for kubelets).
func (c *Cluster) IssueServingCert(name string, dnsNames []string, ips []net.IP) (certFile, keyFile string, err error) {
	if name == "" || strings.ContainsAny(name, "/\\") {
		return "", "", fmt.Errorf("issue serving cert: bad name %q", name)
	}
	// Never replace one of the control plane's own certs (or the CA).
	if _, err := os.Stat(filepath.Join(c.certs.dir, name+".crt")); err == nil {
		return "", "", fmt.Errorf("issue serving cert: %s.crt already exists", name)
	}
	leaf := pki.Leaf{CommonName: name, Hosts: slices.Clone(dnsNames), Server: true}
	if len(dnsNames) > 0 {
		leaf.CommonName = dnsNames[0]
	}
	for _, ip := range ips {
		leaf.Hosts = append(leaf.Hosts, ip.String())
	}
	return c.certs.issue(name, leaf)
}

// Logger is where the cluster reports progress.
func (c *Cluster) Logger() *slog.Logger { return c.log }

// Nodes lists the node backend's nodes.
func (c *Cluster) Nodes() []string {
	if c.nodes == nil {
		return nil
	}
	return c.nodes.NodeNames()
}

// Processes lists the child processes started so far.
func (c *Cluster) Processes() []*Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.procs)
}

func statBinary(path string) error {
	_, err := os.Stat(path)
	return err
}
