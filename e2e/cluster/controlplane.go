package cluster

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/muster-dev/muster/coordinator/embedetcd"
	"github.com/muster-dev/muster/internal/freeport"
)

// The control plane: etcd in-process, kube-apiserver,
// kube-controller-manager and the scheduler as child processes.

// controlPlanePorts are the secure ports of the control plane's processes,
// picked free at start.
type controlPlanePorts struct {
	apiserver, kcm, scheduler int
}

// pickPorts picks the control plane's ports; the apiserver's URL follows.
func (c *Cluster) pickPorts(context.Context) error {
	ports, err := freeport.Pick(3)
	if err != nil {
		return err
	}
	c.ports = controlPlanePorts{apiserver: ports[0], kcm: ports[1], scheduler: ports[2]}
	c.apiserver = "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(c.ports.apiserver))
	return nil
}

// startEtcd starts etcd in this process, on a fresh data dir.
func (c *Cluster) startEtcd(ctx context.Context) error {
	c.log.Info("starting etcd (in-process)")
	etcdCfg := embedetcd.DefaultConfig(filepath.Join(c.stateDir, "etcd"))
	etcdCfg.Name = clusterName
	var err error
	if c.etcd, err = embedetcd.Start(ctx, etcdCfg); err != nil {
		return err
	}
	c.writeState()
	return nil
}

// startAPIServer starts kube-apiserver on etcd and waits until it is ready.
func (c *Cluster) startAPIServer(ctx context.Context) error {
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
		"--secure-port=" + strconv.Itoa(c.ports.apiserver),
		"--cert-dir=" + filepath.Join(c.stateDir, "apiserver"),
		"--tls-cert-file=" + c.certs.apiserverCert,
		"--tls-private-key-file=" + c.certs.apiserverKey,
		"--client-ca-file=" + c.certs.caCert,
		"--requestheader-client-ca-file=" + c.certs.caCert,
		"--requestheader-allowed-names=" + frontProxyClient,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + c.certs.proxyCert,
		"--proxy-client-key-file=" + c.certs.proxyKey,
		// Tokens of other audiences (projected tokens of audience
		// "muster") need no --api-audiences: a TokenReview names the
		// audience it accepts in spec.audiences.
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.certs.saKey,
		"--service-account-signing-key-file=" + c.certs.saKey,
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
		"--kubelet-client-certificate=" + c.certs.kubeletClientCert,
		"--kubelet-client-key=" + c.certs.kubeletClientKey,
		"--kubelet-certificate-authority=" + c.certs.caCert,
		"--kubelet-preferred-address-types=InternalIP",
	}
	apiArgs = c.withFeatureGates(apiArgs)
	if c.cfg.RuntimeConfig != "" {
		apiArgs = append(apiArgs, "--runtime-config="+c.cfg.RuntimeConfig)
	}
	if _, err := c.StartProcess("kube-apiserver", c.cfg.Binaries.APIServer, apiArgs...); err != nil {
		return err
	}
	return c.waitFor(ctx, "kube-apiserver /readyz", c.apiserverReady)
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

// startControllerManager starts kube-controller-manager.
func (c *Cluster) startControllerManager(context.Context) error {
	kcmArgs := append([]string{"--kubeconfig=" + c.kubeconfig}, c.securePortArgs(c.ports.kcm)...)
	kcmArgs = append(kcmArgs,
		"--leader-elect=false",
		"--cluster-name="+clusterName,
		// One admin identity instead of a token per controller: simpler,
		// and no controller is held up waiting for its token.
		"--use-service-account-credentials=false",
		"--service-account-private-key-file="+c.certs.saKey,
		"--root-ca-file="+c.certs.caCert,
		// Lets a node backend get kubelet serving certs through CSRs.
		"--cluster-signing-cert-file="+c.certs.caCert,
		"--cluster-signing-key-file="+c.certs.caKey,
		// The defaults (20 QPS) take half a minute just to untaint 500 nodes.
		"--kube-api-qps=500",
		"--kube-api-burst=1000",
		// Every default controller except node IPAM: nodes get no podCIDR
		// (kwok assigns pod IPs itself), so it would only log errors.
		"--controllers=*,-node-ipam-controller",
	)
	_, err := c.StartProcess("kube-controller-manager", c.cfg.Binaries.ControllerManager, c.withFeatureGates(kcmArgs)...)
	return err
}

// startScheduler starts the scheduler, if there is one, with its
// configuration written for this cluster.
func (c *Cluster) startScheduler(context.Context) error {
	if c.cfg.Binaries.Scheduler == "" {
		return nil
	}
	schedCfg, err := c.writeSchedulerConfig()
	if err != nil {
		return err
	}
	schedArgs := append([]string{"--config=" + schedCfg}, c.securePortArgs(c.ports.scheduler)...)
	c.scheduler = "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(c.ports.scheduler))
	_, err = c.StartProcess("scheduler", c.cfg.Binaries.Scheduler, c.withFeatureGates(schedArgs)...)
	return err
}

// securePortArgs are kcm's and the scheduler's secure-serving flags: on
// port, with the cluster's serving cert, and with authentication and
// authorization delegated to the apiserver through the admin kubeconfig.
func (c *Cluster) securePortArgs(port int) []string {
	return []string{
		"--authentication-kubeconfig=" + c.kubeconfig,
		"--authorization-kubeconfig=" + c.kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + c.certs.servingCert,
		"--tls-private-key-file=" + c.certs.servingKey,
	}
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

// withFeatureGates adds the configured gates to a component's arguments:
// the apiserver, kcm and the scheduler get the same.
func (c *Cluster) withFeatureGates(args []string) []string {
	if gates := featureGates(c.cfg.FeatureGates); gates != "" {
		return append(args, "--feature-gates="+gates)
	}
	return args
}

// featureGates renders gates as the --feature-gates value, sorted.
func featureGates(gates map[string]bool) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(gates)) {
		parts = append(parts, k+"="+strconv.FormatBool(gates[k]))
	}
	return strings.Join(parts, ",")
}
