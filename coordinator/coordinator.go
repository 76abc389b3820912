// Package coordinator wires the rendezvous service together: etcd (embedded
// or external), the per-group hubs and the gRPC server.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	spclientset "sigs.k8s.io/scheduler-plugins/pkg/generated/clientset/versioned"

	"github.com/muster-dev/muster/coordinator/webhook"
	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/podapi/names"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/coordinator/embedetcd"
	"github.com/muster-dev/muster/coordinator/health"
	"github.com/muster-dev/muster/coordinator/hub"
	"github.com/muster-dev/muster/coordinator/metrics"
	"github.com/muster-dev/muster/coordinator/podready"
	"github.com/muster-dev/muster/coordinator/reaper"
	"github.com/muster-dev/muster/coordinator/rendezvous"
	"github.com/muster-dev/muster/coordinator/server"
	"github.com/muster-dev/muster/coordinator/store"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// Config is the coordinator's configuration; DefaultConfig fills it.
type Config struct {
	// Listen is the gRPC address (host:port; port 0 picks one).
	Listen string
	// DataDir holds the embedded etcd's data.
	DataDir string
	// EtcdEndpoints, when set, selects an external etcd cluster instead of
	// the embedded one.
	EtcdEndpoints []string
	// EtcdClientAddr and EtcdPeerAddr are where the embedded etcd listens,
	// so that other replicas can share it.
	EtcdClientAddr string
	EtcdPeerAddr   string
	// Prefix is the etcd key prefix for groups.
	Prefix string
	// MemberTTL is how long a member outlives its agent's last contact.
	MemberTTL time.Duration
	// MaxRestarts is how many restarts a group gets before it fails.
	MaxRestarts int
	// Kubeconfig, when set, connects the coordinator to Kubernetes: it then
	// mirrors each group's readiness onto its pods (condition
	// muster.dev/group-ready, the readiness gate the webhook adds).
	Kubeconfig string
	// InCluster connects to Kubernetes like Kubeconfig does, with the pod's
	// service account (the Helm chart and kustomize base set it).
	InCluster bool
	// WebhookListen, when set, serves the mutating admission webhook (TLS,
	// POST /mutate) on this host:port; with Kubeconfig the coordinator also
	// registers it with the apiserver (caBundle from WebhookCertDir's CA).
	WebhookListen string
	// WebhookCertDir keeps the webhook's CA and serving certificate
	// (created on first start); default DataDir/webhook.
	WebhookCertDir string
	// WebhookTLSDir, when set, holds the webhook's tls.crt and tls.key as
	// the deployment made them (a mounted Secret): the coordinator then
	// makes no certificate and registers nothing, since the deployment owns
	// the MutatingWebhookConfiguration and its caBundle, and WebhookListen
	// may be a wildcard address.
	WebhookTLSDir string
	// MetricsListen, when set, serves Prometheus metrics (/metrics),
	// /healthz and /readyz over HTTP on this host:port.
	MetricsListen string
	// Pprof adds Go's profiles (/debug/pprof/) to MetricsListen: for
	// finding where a loaded coordinator spends its time; off by default
	// (a profile costs CPU, and the port is not authenticated).
	Pprof bool
	// Advertise is the coordinator address injected agents dial (host:port,
	// several comma-separated); default the Listen address.
	Advertise string
	// AgentImage is the image whose /muster/agent the init container copies.
	AgentImage string
	// ReadyHook, when set, hears each change of a group's readiness or
	// generation (with its members' ids); it must not block.
	ReadyHook func(k podapi.Key, generation int64, phase rendezvous.Phase, ready bool, members []string, message string)
	// TLSCert and TLSKey, when set, serve the gRPC port with TLS.
	TLSCert, TLSKey string
	// AgentCA is a PEM file of the CA injected agents verify the gRPC
	// port with; default the webhook's CA when the coordinator made the
	// gRPC certificate itself, or WebhookTLSDir's ca.crt.
	AgentCA string
	// PublishNamespace, with Kubernetes, is where the coordinator writes
	// ConfigMap muster-coordinator: the address agents dial and the CA
	// they verify it with, which kubectl muster reads to find it.
	PublishNamespace string
	// ClientCA, when set, verifies client certificates: a member
	// certificate (URI SAN muster://member/NS/GROUP/MEMBER) makes its holder
	// that member, allowed to announce the certificate's IPs and DNS names.
	ClientCA string
	// TokenAudience is the audience of the pods' projected service-account
	// tokens, checked by TokenReview when connected to Kubernetes.
	TokenAudience string
	// Insecure takes unauthenticated callers at their word even beyond
	// loopback. Without it a coordinator with nothing to authenticate
	// with listens on loopback only.
	Insecure bool
	// RateLimit is the calls per second one identity may make (bursts of
	// RateBurst); 0 turns the limit off.
	RateLimit float64
	RateBurst int
	// MaxMessageBytes caps a gRPC request (agents send a few KiB).
	MaxMessageBytes int
	// MaxGroupSize caps the members of one group.
	MaxGroupSize int
	// MaxGroupsPerNamespace caps the groups of one namespace; 0: no cap.
	MaxGroupsPerNamespace int
	// FinishedGroupTTL is how long a Completed or Failed group with no
	// members stays before it is deleted.
	FinishedGroupTTL time.Duration
	// EtcdCACert, EtcdCert and EtcdKey are the client TLS files of an
	// external etcd (--etcd-endpoints https://...).
	EtcdCACert, EtcdCert, EtcdKey string
	// ServerOptions are extra gRPC server options (credentials, interceptors).
	ServerOptions []grpc.ServerOption
	Logger        *slog.Logger
}

// DefaultConfig is the configuration for one machine.
func DefaultConfig() Config {
	o := server.DefaultOptions()
	return Config{
		Listen:         "127.0.0.1:7070",
		DataDir:        "muster-data",
		EtcdClientAddr: "127.0.0.1:2379",
		EtcdPeerAddr:   "127.0.0.1:2380",
		Prefix:         store.DefaultPrefix,
		MemberTTL:      o.MemberTTL,
		MaxRestarts:    o.MaxRestarts,
		TokenAudience:  auth.DefaultAudience,
		// An agent makes a handful of calls per generation; 50/s with
		// bursts of 100 leaves room for restarts and slows only a flood.
		RateLimit:             50,
		RateBurst:             100,
		MaxMessageBytes:       64 << 10,
		MaxGroupsPerNamespace: o.MaxGroupsPerNamespace,
		MaxGroupSize:          o.MaxGroupSize,
		FinishedGroupTTL:      reaper.DefaultConfig().TTL,
	}
}

// Validate checks the configuration and names the first bad field.
func (c *Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("--listen %q: want host:port: %w", c.Listen, err)
	}
	if len(c.EtcdEndpoints) == 0 && c.DataDir == "" {
		return errors.New("--data-dir is empty: the embedded etcd needs a directory (or give --etcd-endpoints)")
	}
	for _, e := range c.EtcdEndpoints {
		if strings.TrimSpace(e) == "" {
			return errors.New("--etcd-endpoints has an empty entry")
		}
	}
	if c.MemberTTL < 2*time.Second {
		return fmt.Errorf("--member-ttl %s is too short: etcd leases last at least 2s", c.MemberTTL)
	}
	if c.WebhookListen != "" {
		if _, _, err := net.SplitHostPort(c.WebhookListen); err != nil {
			return fmt.Errorf("--webhook-listen %q: want host:port: %w", c.WebhookListen, err)
		}
	}
	if c.WebhookTLSDir != "" && c.WebhookListen == "" {
		return errors.New("--webhook-tls-dir is set but --webhook-listen is empty")
	}
	if c.InCluster && c.Kubeconfig != "" {
		return errors.New("--in-cluster and --kubeconfig are both set: give one")
	}
	if c.Pprof && c.MetricsListen == "" {
		return errors.New("--pprof serves profiles on the metrics port: give --metrics-listen host:port too")
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return fmt.Errorf("--metrics-listen %q: want host:port: %w", c.MetricsListen, err)
		}
	}
	if c.MaxRestarts < 0 {
		return fmt.Errorf("--max-restarts %d is negative", c.MaxRestarts)
	}
	if !strings.HasPrefix(c.Prefix, "/") || !strings.HasSuffix(c.Prefix, "/") {
		return fmt.Errorf("--etcd-prefix %q must start and end with '/'", c.Prefix)
	}
	if c.FinishedGroupTTL <= 0 {
		return fmt.Errorf("--finished-group-ttl %s: want a positive duration", c.FinishedGroupTTL)
	}
	if c.MaxGroupSize < 1 || c.MaxGroupSize > names.MaxSize {
		return fmt.Errorf("--max-group-size %d: want 1 to %d", c.MaxGroupSize, names.MaxSize)
	}
	if c.MaxGroupsPerNamespace < 0 {
		return fmt.Errorf("--max-groups-per-namespace %d is negative (0: no cap)", c.MaxGroupsPerNamespace)
	}
	return c.validateSecurity()
}

// Coordinator is a running replica.
type Coordinator struct {
	cfg   Config
	etcd  *embedetcd.Server
	cli   *clientv3.Client
	Store *store.Store
	hubs  *hub.Registry
	grpc  *grpc.Server
	lis   net.Listener
	kube  kubernetes.Interface
	// etcdEndpoints are the embedded etcd's client URL or cfg's endpoints.
	etcdEndpoints []string
	rest          *rest.Config
	errc          chan error
	// stopWebhook ends the webhook server.
	stopWebhook context.CancelFunc
	health      *health.Checker
	stopHealth  context.CancelFunc
	metricsLis  net.Listener
	agentCA     []byte // PEM injected agents verify the gRPC port with
	stopReaper  context.CancelFunc
	reaperDone  sync.WaitGroup
	once        sync.Once

	// timing is what the hubs observe of each generation's way to ready
	// (served on /metrics).
	timing *metrics.Timing
}

// Start starts a replica and returns once it serves.
func Start(ctx context.Context, cfg Config) (*Coordinator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	c := &Coordinator{cfg: cfg, errc: make(chan error, 2)}
	steps := []func(context.Context, *slog.Logger) error{
		c.connectEtcd,  // embedded or external etcd, and a client that reached it
		c.startStore,   // the store, its reaper and the groups' hubs
		c.connectKube,  // with a kubeconfig: pod readiness and events
		c.serveGRPC,    // TLS, who may call, health, the rendezvous service
		c.startWebhook, // with --webhook-listen: the admission webhook
		c.publish,      // with --publish-namespace: where kubectl muster finds this coordinator
	}
	for _, step := range steps {
		if err := step(ctx, log); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// connectEtcd starts the embedded etcd unless cfg names etcd endpoints,
// and connects a client that has reached it.
func (c *Coordinator) connectEtcd(ctx context.Context, log *slog.Logger) error {
	cfg := c.cfg
	c.etcdEndpoints = cfg.EtcdEndpoints
	if len(c.etcdEndpoints) == 0 {
		ec := embedetcd.DefaultConfig(filepath.Join(cfg.DataDir, "etcd"))
		ec.ClientAddr, ec.PeerAddr = cfg.EtcdClientAddr, cfg.EtcdPeerAddr
		ec.Logger = log.With("component", "etcd")
		e, err := embedetcd.Start(ctx, ec)
		if err != nil {
			return err
		}
		c.etcd = e
		c.etcdEndpoints = []string{e.ClientURL}
		log.Info("embedded etcd serving", "client_url", e.ClientURL, "data_dir", ec.Dir)
		go func() {
			if err := <-e.Err(); err != nil {
				c.errc <- fmt.Errorf("embedded etcd: %w", err)
			}
		}()
	}
	etls, err := etcdTLS(cfg)
	if err != nil {
		return err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.etcdEndpoints,
		DialTimeout: 5 * time.Second,
		TLS:         etls,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return fmt.Errorf("connect to etcd %v: %w", c.etcdEndpoints, err)
	}
	c.cli = cli
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := cli.Status(sctx, c.etcdEndpoints[0]); err != nil {
		return fmt.Errorf("reach etcd %v: %w", c.etcdEndpoints, err)
	}
	return nil
}

// startStore opens the store (bringing its group index up to date: a
// store written by a coordinator before the index lacks it), starts the
// reaper of finished groups and the registry of the groups' hubs.
func (c *Coordinator) startStore(ctx context.Context, log *slog.Logger) error {
	c.Store = store.New(c.cli, c.cfg.Prefix)
	added, removed, err := c.Store.IndexGroups(ctx)
	if err != nil {
		return err
	}
	if added+removed > 0 {
		log.Info("group index repaired", "added", added, "removed", removed)
	}
	rctx, stopReaper := context.WithCancel(context.Background())
	c.stopReaper = stopReaper
	c.reaperDone.Add(1)
	go func() {
		defer c.reaperDone.Done()
		reaper.Run(rctx, c.Store, reaper.Config{TTL: c.cfg.FinishedGroupTTL}, log.With("component", "reaper"))
	}()
	c.hubs = hub.NewRegistry(c.Store, log, 30*time.Second)
	c.hubs.ReadyHook = c.cfg.ReadyHook
	c.timing = metrics.NewTiming()
	c.hubs.Timing = c.timing
	return nil
}

// connectKube, with a kubeconfig (or in a cluster), makes the Kubernetes
// clients and sets each group's pods' readiness condition, and an event on
// a failed group, whenever its hub says readiness changed.
func (c *Coordinator) connectKube(_ context.Context, log *slog.Logger) error {
	cfg := c.cfg
	if cfg.Kubeconfig == "" && !cfg.InCluster {
		return nil
	}
	var rc *rest.Config
	var err error
	if cfg.InCluster {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	}
	if err != nil {
		return fmt.Errorf("--kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	// Every agent's token is reviewed (TokenReview, its pod read) on
	// top of the readiness patches and events: client-go's default 5
	// requests per second would queue them behind each other until
	// agents' calls time out.
	if rc.QPS == 0 {
		rc.QPS, rc.Burst = 200, 400
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("--kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	c.kube, c.rest = cs, rc
	syncer := podready.New(cs, log)
	c.hubs.ReadyHook = func(k podapi.Key, gen int64, phase rendezvous.Phase, ready bool, members []string, msg string) {
		syncer.Set(k.Namespace, k.Name, members, ready, msg)
		if phase == rendezvous.Failed {
			// The first error, and who had it, where kubectl describe shows it.
			syncer.Event(k.Namespace, members, "GroupFailed", msg)
		}
		if cfg.ReadyHook != nil {
			cfg.ReadyHook(k, gen, phase, ready, members, msg)
		}
	}
	return nil
}

// serveGRPC serves the rendezvous service: TLS and who may call
// (security.go), the gossip secret, health and metrics, then the listener.
func (c *Coordinator) serveGRPC(ctx context.Context, log *slog.Logger) error {
	cfg := c.cfg
	var err error
	if c.agentCA, err = c.prepareTLS(log); err != nil {
		return err
	}
	secOpts, kubeAuth, err := c.securityOptions(ctx, log)
	if err != nil {
		return err
	}
	secret, err := gossipSecret(ctx, c.cli, cfg.Prefix)
	if err != nil {
		return err
	}
	sopts := server.Options{MemberTTL: cfg.MemberTTL, MaxRestarts: cfg.MaxRestarts, Runtimes: names.Runtimes,
		MaxGroupsPerNamespace: cfg.MaxGroupsPerNamespace, MaxGroupSize: cfg.MaxGroupSize, GossipSecret: secret}
	if kubeAuth != nil {
		sopts.Access = kubeAuth
	}
	srv := server.New(c.Store, c.hubs, sopts, log)
	opts := append(append([]grpc.ServerOption{
		// Agents hold one stream each for hours; ping them so that dead
		// connections are noticed and their leases released.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}, secOpts...), cfg.ServerOptions...)
	c.grpc = grpc.NewServer(opts...)
	musterv1.RegisterRendezvousServer(c.grpc, srv)
	if err := c.startHealth(log); err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	c.lis = lis
	go func() { c.errc <- c.grpc.Serve(lis) }()
	log.Info("coordinator serving", "listen", lis.Addr().String(), "etcd", strings.Join(c.etcdEndpoints, ","))
	return nil
}

// startWebhook, with --webhook-listen, serves the admission webhook and,
// with a kubeconfig, registers it.
func (c *Coordinator) startWebhook(ctx context.Context, log *slog.Logger) error {
	cfg := c.cfg
	if cfg.WebhookListen == "" {
		return nil
	}
	dir := cfg.WebhookCertDir
	if dir == "" {
		dir = filepath.Join(cfg.DataDir, "webhook")
	}
	var caPEM []byte
	var certFile, keyFile string
	if cfg.WebhookTLSDir != "" {
		certFile, keyFile = filepath.Join(cfg.WebhookTLSDir, "tls.crt"), filepath.Join(cfg.WebhookTLSDir, "tls.key")
	} else {
		host, _, _ := net.SplitHostPort(cfg.WebhookListen)
		if host == "" || host == "0.0.0.0" || host == "::" {
			return fmt.Errorf("--webhook-listen %q: give the address the apiserver calls (e.g. 127.0.0.1:8443); the certificate names it", cfg.WebhookListen)
		}
		var err error
		if caPEM, certFile, keyFile, err = webhook.EnsureCerts(dir, []string{host}); err != nil {
			return fmt.Errorf("webhook certificates in %s: %w", dir, err)
		}
	}
	wc := webhook.DefaultConfig()
	wc.CoordinatorAddress = cfg.Advertise
	if wc.CoordinatorAddress == "" {
		wc.CoordinatorAddress = c.Addr()
	}
	if cfg.AgentImage != "" {
		wc.AgentImage = cfg.AgentImage
	}
	wc.Runtimes = names.Runtimes
	wc.CoordinatorCA = c.agentCA
	wc.TokenAudience = cfg.TokenAudience
	if c.kube != nil {
		if sp, err := spclientset.NewForConfig(c.rest); err == nil {
			wc.SizeLookup = webhook.PodGroupSizes(sp)
		}
		wc.GangLookup = webhook.UpstreamPodGroups(c.kube)
	}
	if err := wc.Validate(); err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	c.stopWebhook = cancel
	// Bind now, so that a taken port fails the start instead of a goroutine.
	ln, err := net.Listen("tcp", cfg.WebhookListen)
	if err != nil {
		cancel()
		return fmt.Errorf("--webhook-listen %s: %w", cfg.WebhookListen, err)
	}
	go func() {
		if err := webhook.ServeListener(wctx, ln, certFile, keyFile, webhook.NewHandler(wc, log)); err != nil {
			c.errc <- fmt.Errorf("webhook: %w", err)
		}
	}()
	log.Info("admission webhook serving", "listen", cfg.WebhookListen, "agent_image", wc.AgentImage, "agents_dial", wc.CoordinatorAddress)
	if c.kube == nil || cfg.WebhookTLSDir != "" {
		return nil
	}
	url := "https://" + cfg.WebhookListen + "/mutate"
	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	if err := webhook.Register(rctx, c.kube, "muster", url, caPEM); err != nil {
		return fmt.Errorf("register the webhook: %w", err)
	}
	log.Info("admission webhook registered", "name", "muster", "url", url)
	return nil
}

// Addr is the gRPC address the replica listens on.
func (c *Coordinator) Addr() string { return c.lis.Addr().String() }

// EtcdURL is the embedded etcd's client URL ("" with an external etcd).
func (c *Coordinator) EtcdURL() string {
	if c.etcd == nil {
		return ""
	}
	return c.etcd.ClientURL
}

// EtcdRevision is the embedded etcd's revision (0 with an external etcd).
func (c *Coordinator) EtcdRevision() int64 {
	if c.etcd == nil {
		return 0
	}
	return c.etcd.Revision()
}

// Err reports a fatal error of the gRPC server or the embedded etcd.
func (c *Coordinator) Err() <-chan error { return c.errc }

// Close stops serving, then stops the hubs and etcd. It may be called
// more than once.
func (c *Coordinator) Close() { c.once.Do(c.close) }

func (c *Coordinator) close() {
	if c.stopHealth != nil {
		c.stopHealth()
		c.health.Shutdown()
	}
	if c.stopWebhook != nil {
		c.stopWebhook()
	}
	// Stopping the hubs first ends every agent stream with Unavailable, so
	// agents move to another replica and GracefulStop only waits for unary
	// calls in flight.
	if c.hubs != nil {
		c.hubs.Close()
	}
	if c.grpc != nil {
		done := make(chan struct{})
		go func() { c.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			c.grpc.Stop()
		}
	}
	if c.stopReaper != nil {
		c.stopReaper()
		c.reaperDone.Wait()
	}
	if c.cli != nil {
		c.cli.Close()
	}
	if c.etcd != nil {
		c.etcd.Close()
	}
}
