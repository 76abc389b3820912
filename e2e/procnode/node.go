package procnode

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	vkslog "github.com/virtual-kubelet/virtual-kubelet/log/slog"
	vknode "github.com/virtual-kubelet/virtual-kubelet/node"
	vkapi "github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/muster-dev/muster/e2e/cluster"
)

// kubeletVersion is what the nodes report: the control plane's version, so
// that nothing sees a skew.
const kubeletVersion = "v1.37.2"

// hostIP is every node's address (status.hostIP of its pods).
const hostIP = "127.0.0.1"

// node is one process node: vk's node and pod controllers around a provider,
// and the kubelet API server.
type node struct {
	name     string
	provider *provider
	nodeCtl  *vknode.NodeController
	podCtl   *vknode.PodController
	server   *http.Server
	events   record.EventBroadcaster
	logFile  *os.File
	log      *slog.Logger
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// startNode registers obj and starts everything that plays its kubelet. On
// error, the returned node (if any) still has to be stopped.
func startNode(ctx context.Context, c *cluster.Cluster, cfg Config, obj *corev1.Node, ips *ipPool, podsDir string) (*node, error) {
	logFile, err := os.OpenFile(filepath.Join(c.Dir(), "logs", "procnode-"+obj.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open node log: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(logFile, nil)).With("node", obj.Name)
	ctx, cancel := context.WithCancel(ctx)
	ctx = vklog.WithLogger(ctx, vkslog.FromSlog(logger))
	n := &node{name: obj.Name, cancel: cancel, logFile: logFile, log: logger}
	n.provider = newProvider(providerConfig{
		ctx:         ctx,
		cfg:         cfg,
		nodeName:    obj.Name,
		client:      c.Clientset(),
		ips:         ips,
		podsDir:     podsDir,
		allocatable: obj.Status.Allocatable,
		log:         logger,
	})
	port, err := n.serveKubeletAPI(c)
	if err != nil {
		return n, err
	}
	fillNode(obj, port)
	if err := n.startControllers(ctx, c.Clientset(), cfg, obj); err != nil {
		return n, err
	}
	logger.Info("node started", "kubelet-port", port)
	return n, nil
}

// serveKubeletAPI serves the kubelet API (logs, pod list) on a port of
// its own and returns the port. TLS with a cert of the cluster CA, and only
// clients with a cert of that CA (the apiserver's kubelet client cert,
// admins). Any such client may do anything: there is no per-request
// authorization.
func (n *node) serveKubeletAPI(c *cluster.Cluster) (port int, err error) {
	l, err := net.Listen("tcp", net.JoinHostPort(hostIP, "0"))
	if err != nil {
		return 0, fmt.Errorf("listen for the kubelet API: %w", err)
	}
	tlsConfig, err := kubeletTLS(c, n.name)
	if err != nil {
		l.Close()
		return 0, err
	}
	mux := http.NewServeMux()
	vkapi.AttachPodRoutes(vkapi.PodHandlerConfig{
		GetContainerLogs: n.provider.GetContainerLogs,
		GetPods:          n.provider.GetPods,
	}, mux, false)
	n.server = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         tlsConfig,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}
	n.wg.Go(func() {
		if err := n.server.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("kubelet API server", "err", err)
		}
	})
	return l.Addr().(*net.TCPAddr).Port, nil
}

// kubeletTLS is the kubelet API's TLS: a serving cert of the cluster CA for
// the node's name, and client certs of that CA required.
func kubeletTLS(c *cluster.Cluster, nodeName string) (*tls.Config, error) {
	certFile, keyFile, err := c.IssueServingCert("kubelet-"+nodeName, []string{nodeName, "localhost"}, []net.IP{net.ParseIP(hostIP)})
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load kubelet serving cert: %w", err)
	}
	caPEM, err := os.ReadFile(c.CAFile())
	if err != nil {
		return nil, fmt.Errorf("read cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// startControllers starts vk's node controller (which registers obj and
// keeps its lease) and pod controller (which runs the pods bound to it
// through the provider), with the informer and event recorder they share.
func (n *node) startControllers(ctx context.Context, cs kubernetes.Interface, cfg Config, obj *corev1.Node) error {
	// Pods bound to this node only: the informer vk's pod controller and
	// the provider's condition watch share.
	podFactory := informers.NewSharedInformerFactoryWithOptions(cs, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", obj.Name).String()
		}))
	podInformer := podFactory.Core().V1().Pods()
	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Pod)
			p, ok2 := cur.(*corev1.Pod)
			if ok1 && ok2 {
				n.provider.podUpdated(o, p)
			}
		},
	}); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	// vk's pod controller insists on these informers but uses them only to
	// resolve env vars, which this provider does itself, as the kubelet
	// does, once the pod IP is known (SkipDownwardAPIResolution). They are
	// never started: no watches on every Secret in the cluster.
	unused := informers.NewSharedInformerFactory(cs, 0)

	n.events = record.NewBroadcaster(record.WithContext(ctx))
	n.events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cs.CoreV1().Events("")})
	recorder := n.events.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "procnode", Host: obj.Name})
	n.provider.recorder = recorder

	var err error
	n.podCtl, err = vknode.NewPodController(vknode.PodControllerConfig{
		PodClient:                 podsClient{PodsGetter: cs.CoreV1(), p: n.provider},
		PodInformer:               podInformer,
		EventRecorder:             recorder,
		Provider:                  n.provider,
		ConfigMapInformer:         unused.Core().V1().ConfigMaps(),
		SecretInformer:            unused.Core().V1().Secrets(),
		ServiceInformer:           unused.Core().V1().Services(),
		SkipDownwardAPIResolution: true,
	})
	if err != nil {
		return fmt.Errorf("pod controller: %w", err)
	}
	n.nodeCtl, err = vknode.NewNodeController(vknode.NaiveNodeProvider{}, obj, cs.CoreV1().Nodes(),
		vknode.WithNodeEnableLeaseV1(cs.CoordinationV1().Leases(corev1.NamespaceNodeLease), cfg.LeaseDurationSeconds))
	if err != nil {
		return fmt.Errorf("node controller: %w", err)
	}
	podFactory.Start(ctx.Done())
	n.wg.Go(func() {
		if err := n.nodeCtl.Run(ctx); err != nil && ctx.Err() == nil {
			n.log.Error("node controller stopped", "err", err)
		}
	})
	n.wg.Go(func() {
		// Workers block in DeletePod for a pod's grace period: enough of
		// them that deleting many pods at once is not serialised.
		if err := n.podCtl.Run(ctx, 32); err != nil && ctx.Err() == nil {
			n.log.Error("pod controller stopped", "err", err)
		}
	})
	n.wg.Go(func() {
		<-ctx.Done()
		podFactory.Shutdown()
	})
	return nil
}

// waitReady returns once both controllers run, or with their error.
func (n *node) waitReady(ctx context.Context) error {
	for _, ctl := range []struct {
		what        string
		ready, done <-chan struct{}
		err         func() error
	}{
		{"node controller", n.nodeCtl.Ready(), n.nodeCtl.Done(), n.nodeCtl.Err},
		{"pod controller", n.podCtl.Ready(), n.podCtl.Done(), n.podCtl.Err},
	} {
		select {
		case <-ctl.ready:
		case <-ctl.done:
			return fmt.Errorf("%s stopped: %w", ctl.what, ctl.err())
		case <-ctx.Done():
			return fmt.Errorf("wait for the %s: %w", ctl.what, ctx.Err())
		}
	}
	return nil
}

// stop stops the controllers first (so that nothing restarts what is about
// to be killed, nor reports it), then kills every pod's processes.
func (n *node) stop() error {
	n.cancel()
	var err error
	if n.provider != nil {
		err = n.provider.killAll()
	}
	if n.server != nil {
		n.server.Close()
	}
	return err
}

// wait returns once every goroutine of the node has ended.
func (n *node) wait() {
	n.wg.Wait()
	if n.events != nil {
		n.events.Shutdown()
	}
	n.logFile.Close()
}

// fillNode completes the shape's Node with what a kubelet reports: where
// its API is, what it runs, and that it is healthy.
func fillNode(obj *corev1.Node, port int) {
	obj.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: hostIP},
		{Type: corev1.NodeHostName, Address: obj.Name},
	}
	obj.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(port)
	obj.Status.NodeInfo = corev1.NodeSystemInfo{
		KubeletVersion:          kubeletVersion,
		OperatingSystem:         "linux",
		Architecture:            "amd64",
		ContainerRuntimeVersion: "procnode://" + kubeletVersion,
		KernelVersion:           kernelVersion(),
		OSImage:                 "procnode (processes on the host)",
	}
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	obj.Status.Conditions = []corev1.NodeCondition{
		cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "procnode is posting ready status"),
		cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "no memory pressure"),
		cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "no disk pressure"),
		cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "no PID pressure"),
	}
}

// kernelVersion is this machine's kernel release, which the processes of
// every pod run on.
func kernelVersion() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
