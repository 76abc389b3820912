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
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

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

func (c *Cluster) start(ctx context.Context) error {
	if err := c.cfg.validate(); err != nil {
		return err
	}
	if err := c.prepareDir(); err != nil {
		return err
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	apiPort, kcmPort, schedPort := ports[0], ports[1], ports[2]
	c.apiserver = "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(apiPort))

	_, svcNet, err := net.ParseCIDR(c.cfg.ServiceCIDR)
	if err != nil {
		return fmt.Errorf("service CIDR %q: %w", c.cfg.ServiceCIDR, err)
	}
	serviceIP := slices.Clone(svcNet.IP.To4())
	if serviceIP == nil {
		return fmt.Errorf("service CIDR %q: only IPv4 is supported here", c.cfg.ServiceCIDR)
	}
	var why string
	if c.svcRoute, why, err = routeServiceRangeNowhere(c.stateDir, c.cfg.ServiceCIDR); err != nil {
		return err
	} else if why != "" {
		c.log.Warn("the service range is not routed nowhere ("+why+"): a request to a ClusterIP would follow the default route and leave the machine", "range", c.cfg.ServiceCIDR)
	}
	serviceIP[3]++ // the `kubernetes` Service takes the range's first address
	if c.certs, err = newCerts(filepath.Join(c.stateDir, "pki"), serviceIP); err != nil {
		return err
	}
	if err := c.certs.writeKubeconfig(c.kubeconfig, c.apiserver); err != nil {
		return err
	}
	if err := c.loadClient(); err != nil {
		return err
	}

	c.log.Info("starting etcd (in-process)")
	etcdCfg := embedetcd.DefaultConfig(filepath.Join(c.stateDir, "etcd"))
	etcdCfg.Name = clusterName
	if c.etcd, err = embedetcd.Start(ctx, etcdCfg); err != nil {
		return err
	}
	c.writeState()

	gates := featureGates(c.cfg.FeatureGates)
	p := c.certs
	apiArgs := []string{
		"--etcd-servers=" + c.etcd.ClientURL,
		"--bind-address=127.0.0.1",
		// Without it the apiserver would advertise the address of the
		// default route's interface.
		"--advertise-address=127.0.0.1",
		// The endpoint reconciler publishes the advertise address as the
		// `kubernetes` Service's endpoints and refuses loopback addresses
		// (the apiserver exits). Nothing here reaches the apiserver through
		// that Service (no pod network, no kube-proxy), so it has none.
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + filepath.Join(c.stateDir, "apiserver"),
		"--tls-cert-file=" + p.apiserverCert,
		"--tls-private-key-file=" + p.apiserverKey,
		"--client-ca-file=" + p.caCert,
		"--requestheader-client-ca-file=" + p.caCert,
		"--requestheader-allowed-names=" + frontProxyClient,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.proxyCert,
		"--proxy-client-key-file=" + p.proxyKey,
		// Tokens of other audiences (projected tokens of audience
		// "muster") need no --api-audiences: a TokenReview names the
		// audience it accepts in spec.audiences.
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.saKey,
		"--service-account-signing-key-file=" + p.saKey,
		"--service-cluster-ip-range=" + c.cfg.ServiceCIDR,
		// The authorizers of a real cluster rather than AlwaysAllow, so a
		// component or workload missing an RBAC rule fails here as it would
		// in production. The admin identity (system:masters) passes both.
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
		// kubectl logs/exec reach a node's kubelet API at its InternalIP
		// (127.0.0.1 for every backend here) and the port in the node's
		// status.daemonEndpoints; a backend that serves that API gets its
		// serving cert from IssueServingCert, which the apiserver checks
		// against the cluster CA.
		"--kubelet-client-certificate=" + p.kubeletClientCert,
		"--kubelet-client-key=" + p.kubeletClientKey,
		"--kubelet-certificate-authority=" + p.caCert,
		"--kubelet-preferred-address-types=InternalIP",
	}
	if gates != "" {
		apiArgs = append(apiArgs, "--feature-gates="+gates)
	}
	if c.cfg.RuntimeConfig != "" {
		apiArgs = append(apiArgs, "--runtime-config="+c.cfg.RuntimeConfig)
	}
	if _, err := c.StartProcess("kube-apiserver", c.cfg.Binaries.APIServer, apiArgs...); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "kube-apiserver /readyz", c.apiserverReady); err != nil {
		return err
	}
	if err := c.installCRDs(ctx); err != nil {
		return err
	}

	kcmArgs := []string{
		"--kubeconfig=" + c.kubeconfig,
		"--authentication-kubeconfig=" + c.kubeconfig,
		"--authorization-kubeconfig=" + c.kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(kcmPort),
		"--tls-cert-file=" + p.servingCert,
		"--tls-private-key-file=" + p.servingKey,
		"--leader-elect=false",
		"--cluster-name=" + clusterName,
		// One admin identity instead of a token per controller: simpler,
		// and no controller is held up waiting for its token.
		"--use-service-account-credentials=false",
		"--service-account-private-key-file=" + p.saKey,
		"--root-ca-file=" + p.caCert,
		// Lets a node backend get kubelet serving certs through CSRs.
		"--cluster-signing-cert-file=" + p.caCert,
		"--cluster-signing-key-file=" + p.caKey,
		// The defaults (20 QPS) take half a minute just to untaint 500 nodes.
		"--kube-api-qps=500",
		"--kube-api-burst=1000",
		// Every default controller except node IPAM: nodes get no podCIDR
		// (kwok assigns pod IPs itself), so it would only log errors.
		"--controllers=*,-node-ipam-controller",
	}
	if gates != "" {
		kcmArgs = append(kcmArgs, "--feature-gates="+gates)
	}
	if _, err := c.StartProcess("kube-controller-manager", c.cfg.Binaries.ControllerManager, kcmArgs...); err != nil {
		return err
	}

	if c.cfg.Binaries.Scheduler != "" {
		schedCfg, err := c.writeSchedulerConfig()
		if err != nil {
			return err
		}
		schedArgs := []string{
			"--config=" + schedCfg,
			"--authentication-kubeconfig=" + c.kubeconfig,
			"--authorization-kubeconfig=" + c.kubeconfig,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(schedPort),
			"--tls-cert-file=" + p.servingCert,
			"--tls-private-key-file=" + p.servingKey,
		}
		c.scheduler = "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(schedPort))
		if gates != "" {
			schedArgs = append(schedArgs, "--feature-gates="+gates)
		}
		if _, err := c.StartProcess("scheduler", c.cfg.Binaries.Scheduler, schedArgs...); err != nil {
			return err
		}
	}

	if c.cfg.Nodes != nil {
		c.nodes = c.cfg.Nodes
		if err := c.nodes.Start(ctx, c); err != nil {
			return fmt.Errorf("start nodes: %w", err)
		}
	}
	// After the nodes: pods in a network of their own reach the coordinator
	// at that network's gateway, which exists once the nodes started.
	if err := c.startCoordinator(ctx); err != nil {
		return err
	}

	health := c.healthClient()
	if err := c.waitFor(ctx, "kube-controller-manager /healthz", func(ctx context.Context) (bool, string, error) {
		return httpOK(ctx, health, kcmPort, "/healthz")
	}); err != nil {
		return err
	}
	if c.cfg.Binaries.Scheduler != "" {
		if err := c.waitFor(ctx, "scheduler /readyz", func(ctx context.Context) (bool, string, error) {
			return httpOK(ctx, health, schedPort, "/readyz")
		}); err != nil {
			return err
		}
	}
	// kcm's serviceaccount controller creates it; until then the
	// ServiceAccount admission plugin refuses every pod in "default".
	if err := c.waitFor(ctx, "default ServiceAccount", func(ctx context.Context) (bool, string, error) {
		_, err := c.clientset.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		return true, "", nil
	}); err != nil {
		return err
	}
	if c.nodes != nil {
		if err := c.waitFor(ctx, "nodes Ready and untainted", c.nodesReady); err != nil {
			return err
		}
	}
	c.writeState()
	return nil
}

// prepareDir creates the layout and wipes the previous run's state, after
// making sure no other launcher still uses this dir.
func (c *Cluster) prepareDir() error {
	if st, err := ReadState(c.cfg.Dir); err == nil && st.PID != os.Getpid() && Alive(st.PID) {
		return fmt.Errorf("a cluster (launcher pid %d) is still running in %s: stop it first", st.PID, c.cfg.Dir)
	}
	if err := os.RemoveAll(c.stateDir); err != nil {
		return fmt.Errorf("wipe old state: %w", err)
	}
	if err := os.Remove(c.kubeconfig); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove old kubeconfig: %w", err)
	}
	for _, d := range []string{c.stateDir, c.logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	return nil
}

func (c *Cluster) loadClient() error {
	rc, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	// Tests create hundreds of pods and nodes; client-go's default 5 QPS
	// would dominate their run time.
	rc.QPS, rc.Burst = 500, 1000
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("client for %s: %w", c.apiserver, err)
	}
	c.restConfig, c.clientset = rc, cs
	return nil
}

// writeSchedulerConfig copies the KubeSchedulerConfiguration template with
// clientConnection.kubeconfig pointing at this cluster.
func (c *Cluster) writeSchedulerConfig() (string, error) {
	conf := map[string]any{
		"apiVersion":     "kubescheduler.config.k8s.io/v1",
		"kind":           "KubeSchedulerConfiguration",
		"leaderElection": map[string]any{"leaderElect": false},
		"clientConnection": map[string]any{
			"qps": 1000, "burst": 2000,
		},
	}
	if c.cfg.SchedulerConfig != "" {
		data, err := os.ReadFile(c.cfg.SchedulerConfig)
		if err != nil {
			return "", fmt.Errorf("read scheduler config template: %w", err)
		}
		conf = map[string]any{}
		if err := yaml.Unmarshal(data, &conf); err != nil {
			return "", fmt.Errorf("parse scheduler config template %s: %w", c.cfg.SchedulerConfig, err)
		}
	}
	cc, _ := conf["clientConnection"].(map[string]any)
	if cc == nil {
		cc = map[string]any{}
	}
	cc["kubeconfig"] = c.kubeconfig
	conf["clientConnection"] = cc
	data, err := yaml.Marshal(conf)
	if err != nil {
		return "", fmt.Errorf("encode scheduler config: %w", err)
	}
	path := filepath.Join(c.stateDir, "scheduler-config.yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return "", fmt.Errorf("write scheduler config: %w", err)
	}
	return path, nil
}

// StartProcess starts a child process that belongs to the cluster: its
// output goes to <Dir>/logs/<name>.log, an unexpected exit fails the
// cluster (see Failed), and Stop ends it. Node backends use it.
func (c *Cluster) StartProcess(name, bin string, args ...string) (*Process, error) {
	return c.StartProcessEnv(name, bin, nil, args...)
}

// StartProcessEnv is StartProcess with env (KEY=value) added to this
// process's environment.
func (c *Cluster) StartProcessEnv(name, bin string, env []string, args ...string) (*Process, error) {
	// The lock is held across the start so that Stop, which takes it
	// first, either sees this process or refuses it.
	c.mu.Lock()
	if c.stopping {
		c.mu.Unlock()
		return nil, fmt.Errorf("start %s: cluster is stopping", name)
	}
	p, err := startProcess(name, filepath.Join(c.logDir, name+".log"), bin, env, args)
	if err == nil {
		c.procs = append(c.procs, p)
	}
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	c.log.Info("started "+name, "pid", p.PID(), "log", p.Log)
	c.writeState()
	go func() {
		<-p.done
		if !p.expectedExit() {
			c.fail(p.exitError())
		}
	}()
	return p, nil
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

// State is what <Dir>/cluster/state.json records, for tools outside the
// launching process (cluster down, scripts).
type State struct {
	// PID of the launcher: the process that runs etcd and owns the children.
	PID        int            `json:"pid"`
	APIServer  string         `json:"apiserver"`
	Etcd       string         `json:"etcd,omitempty"`
	Kubeconfig string         `json:"kubeconfig"`
	Processes  []ProcessState `json:"processes"`
}

// ProcessState is one child process.
type ProcessState struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	Log  string `json:"log"`
}

// ReadState reads dir's state.json.
func ReadState(dir string) (*State, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cluster", "state.json"))
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, "cluster", "state.json"), err)
	}
	return &st, nil
}

// writeState records the current processes; it is rewritten after every
// start so that a crash mid-start still leaves the pids behind. Best
// effort: the state file is for tools, the cluster does not need it.
func (c *Cluster) writeState() {
	st := State{PID: os.Getpid(), APIServer: c.apiserver, Kubeconfig: c.kubeconfig}
	if c.etcd != nil {
		st.Etcd = c.etcd.ClientURL
	}
	for _, p := range c.Processes() {
		st.Processes = append(st.Processes, ProcessState{Name: p.Name, PID: p.PID(), Log: p.Log})
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err == nil {
		tmp := filepath.Join(c.stateDir, "state.json.tmp")
		if err = os.WriteFile(tmp, data, 0o644); err == nil {
			err = os.Rename(tmp, filepath.Join(c.stateDir, "state.json"))
		}
	}
	if err != nil {
		c.log.Warn("cannot write cluster state", "err", err)
	}
}

// waitFor polls check until it reports done, the context ends or a
// component dies, logging progress every 5 seconds so that a slow start
// shows what it waits for.
func (c *Cluster) waitFor(ctx context.Context, what string, check func(context.Context) (done bool, status string, err error)) error {
	began := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	lastReport := began
	status := ""
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		done, st, err := check(cctx)
		cancel()
		if err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		if done {
			c.log.Info(what+": ok", "took", time.Since(began).Round(10*time.Millisecond))
			return nil
		}
		status = st
		if time.Since(lastReport) >= 5*time.Second {
			lastReport = time.Now()
			c.log.Info("waiting for "+what, "elapsed", time.Since(began).Round(time.Second), "status", status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last status: %s)", what, ctx.Err(), status)
		case <-c.failed:
			return fmt.Errorf("wait for %s: %w", what, c.failErr)
		case <-tick.C:
		}
	}
}

func (c *Cluster) apiserverReady(ctx context.Context) (bool, string, error) {
	body, err := c.clientset.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		msg := err.Error()
		if len(body) > 0 {
			msg = lastLines(string(body), 3)
		}
		return false, msg, nil
	}
	return true, "", nil
}

func (c *Cluster) nodesReady(ctx context.Context) (bool, string, error) {
	list, err := c.clientset.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, err.Error(), nil
	}
	want := c.nodes.NodeNames()
	ready := map[string]bool{}
	for i := range list.Items {
		ready[list.Items[i].Name] = nodeReady(&list.Items[i])
	}
	n := 0
	var notReady []string
	for _, name := range want {
		if ready[name] {
			n++
		} else if len(notReady) < 3 {
			notReady = append(notReady, name)
		}
	}
	return n == len(want), fmt.Sprintf("%d/%d ready (not yet: %s)", n, len(want), strings.Join(notReady, ", ")), nil
}

// healthClient reaches kcm's and the scheduler's health endpoints, whose
// serving cert the cluster CA signed; those paths need no credentials.
func (c *Cluster) healthClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.certs.ca.PEM)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func httpOK(ctx context.Context, client *http.Client, port int, path string) (bool, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://127.0.0.1:"+strconv.Itoa(port)+path, nil)
	if err != nil {
		return false, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, err.Error(), nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, resp.Status, nil
	}
	return true, "", nil
}

// featureGates renders gates as the --feature-gates value, sorted.
func featureGates(gates map[string]bool) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(gates)) {
		parts = append(parts, k+"="+strconv.FormatBool(gates[k]))
	}
	return strings.Join(parts, ",")
}

// freePorts picks n distinct free ports on 127.0.0.1. They are released
// before the components bind them; another process could take one in
// between, in which case that component fails to start with "address in
// use" in its log.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	var failing []string
	for _, l := range lines {
		if strings.Contains(l, "failed") {
			failing = append(failing, strings.TrimSpace(l))
		}
	}
	if len(failing) > 0 {
		lines = failing
	}
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "; ")
}

// installCRDs creates the configured CustomResourceDefinitions and waits
// until each is established (served).
func (c *Cluster) installCRDs(ctx context.Context) error {
	if len(c.cfg.CRDs) == 0 {
		return nil
	}
	ax, err := apiextensionsclient.NewForConfig(c.restConfig)
	if err != nil {
		return fmt.Errorf("apiextensions client: %w", err)
	}
	for _, f := range c.cfg.CRDs {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("read CRD: %w", err)
		}
		var crd apiextensionsv1.CustomResourceDefinition
		if err := yaml.Unmarshal(b, &crd); err != nil {
			return fmt.Errorf("decode CRD %s: %w", f, err)
		}
		if _, err := ax.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CRD %s from %s: %w", crd.Name, f, err)
		}
		name := crd.Name
		if err := c.waitFor(ctx, "CRD "+name+" established", func(ctx context.Context) (bool, string, error) {
			got, err := ax.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error(), nil
			}
			for _, cond := range got.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					return true, "", nil
				}
			}
			return false, "not established yet", nil
		}); err != nil {
			return err
		}
	}
	return nil
}

func statBinary(path string) error {
	_, err := os.Stat(path)
	return err
}
