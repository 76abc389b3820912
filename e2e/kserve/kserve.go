// Package kserve runs KServe's controller manager (github.com/kserve/kserve
// cmd/manager, built from its own module in tools/kserve into
// bin/kserve-manager by `make kserve-bin`) against a local control plane
// (e2e/cluster), as its release manifests would run it in a cluster: its
// CRDs (config/crd/minimal), its inferenceservice-config ConfigMap (the
// module's own, in Standard deployment mode with ingress creation off: no
// Knative, Istio or Gateway API here), its webhooks (InferenceService
// defaulting and validation, ServingRuntime validation, the pod mutator),
// no leader election. Its webhook server listens with a certificate from
// the cluster CA, and the webhook configurations point the apiserver there
// by URL instead of through a Service.
package kserve

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/muster-dev/muster/e2e/cluster"
)

// The KServe APIs the tests use.
var (
	InferenceServices        = schema.GroupVersionResource{Group: "serving.kserve.io", Version: "v1beta1", Resource: "inferenceservices"}
	ClusterServingRuntimes   = schema.GroupVersionResource{Group: "serving.kserve.io", Version: "v1alpha1", Resource: "clusterservingruntimes"}
	ClusterStorageContainers = schema.GroupVersionResource{Group: "serving.kserve.io", Version: "v1alpha1", Resource: "clusterstoragecontainers"}
)

// Namespace is where KServe's manager reads its ConfigMap (POD_NAMESPACE).
const Namespace = "kserve"

// Build brings bin/kserve-manager up to date (`make kserve-bin`: built only
// when missing or older than tools/kserve/go.mod) in binDir and returns its
// path and the directory of the github.com/kserve/kserve module (CRDs,
// ConfigMap, webhook manifests).
func Build(ctx context.Context, repoRoot, binDir string) (bin, moduleDir string, err error) {
	cmd := exec.CommandContext(ctx, "make", "-s", "-C", repoRoot, "kserve-bin", "BIN="+binDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("build KServe's manager (make kserve-bin BIN=%s): %w\n%s", binDir, err, out)
	}
	moduleDir, err = ModuleDir(ctx, repoRoot)
	return filepath.Join(binDir, "kserve-manager"), moduleDir, err
}

// ModuleDir is the directory of the github.com/kserve/kserve module that
// tools/kserve pins (downloaded from the Go module proxy if missing).
func ModuleDir(ctx context.Context, repoRoot string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/kserve/kserve")
	cmd.Dir = filepath.Join(repoRoot, "tools", "kserve")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("find the github.com/kserve/kserve module (go list -m in tools/kserve): %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// CRDs are the module's minimal CustomResourceDefinitions (the five
// serving.kserve.io kinds of config/crd/minimal, and
// ClusterStorageContainer, which the manager lists for every storageUri
// and panics without), for cluster.Config.CRDs.
func CRDs(moduleDir string) ([]string, error) {
	dir := filepath.Join(moduleDir, "config", "crd", "minimal")
	files, err := filepath.Glob(filepath.Join(dir, "serving.kserve.io_*.yaml"))
	if err == nil && len(files) != 5 {
		err = fmt.Errorf("%d CRDs in %s, want KServe's 5", len(files), dir)
	}
	return append(files, filepath.Join(dir, "clusterstoragecontainer", "serving.kserve.io_clusterstoragecontainers.yaml")), err
}

// Start runs the manager bin as a process of c (the CRDs must be
// installed: see CRDs) and registers its webhooks. It returns once the
// apiserver reaches them: KServe's webhooks answer a server-side dry run
// of an InferenceService.
func Start(ctx context.Context, c *cluster.Cluster, bin, moduleDir string) (*cluster.Process, error) {
	cs := c.Clientset()
	if err := config(ctx, cs, moduleDir); err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		return nil, err
	}
	// KServe's default storage initializer, as its release installs it.
	b, err := os.ReadFile(filepath.Join(moduleDir, "config", "storagecontainers", "default.yaml"))
	if err != nil {
		return nil, fmt.Errorf("KServe storage container: %w", err)
	}
	var sc unstructured.Unstructured
	if err := yaml.Unmarshal(b, &sc.Object); err != nil {
		return nil, fmt.Errorf("KServe storage container: %w", err)
	}
	if _, err := dyn.Resource(ClusterStorageContainers).Create(ctx, &sc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("KServe storage container: %w", err)
	}
	tmp, port, err := webhookServer(c, "kserve-manager")
	if err != nil {
		return nil, err
	}
	// Metrics and health probes off: nothing scrapes them here, and the
	// manager would bind them on every interface.
	p, err := c.StartProcessEnv("kserve-manager", bin,
		[]string{"TMPDIR=" + tmp, "POD_NAMESPACE=" + Namespace},
		"--kubeconfig="+c.Kubeconfig(), "--webhook-port="+strconv.Itoa(port),
		"--metrics-addr=0", "--health-probe-addr=0", "--leader-elect=false", "--zap-devel=false")
	if err != nil {
		return nil, err
	}
	caBundle, err := os.ReadFile(c.CAFile())
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	base := "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := register(ctx, cs, moduleDir, base, caBundle); err != nil {
		return nil, err
	}
	probe := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
		"metadata": map[string]any{"name": "webhook-probe"},
		"spec": map[string]any{"predictor": map[string]any{"model": map[string]any{
			"modelFormat": map[string]any{"name": "probe"}, "runtime": "probe"}}},
	}}
	var last error
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case <-p.Done():
			return false, fmt.Errorf("kserve-manager exited: %v (log %s)", p.ExitErr(), p.Log)
		default:
		}
		_, last = dyn.Resource(InferenceServices).Namespace("default").Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		// Admitted, or refused by KServe's own webhook: either way the
		// apiserver reached it.
		return last == nil || strings.Contains(last.Error(), "denied the request"), nil
	})
	if err != nil {
		return nil, fmt.Errorf("KServe webhooks at %s not reachable (last dry run: %v): %w; log %s", base, last, err, p.Log)
	}
	return p, nil
}

// config creates the kserve namespace and KServe's inferenceservice-config
// ConfigMap from the module's config/configmap/inferenceservice.yaml, with
// two changes: the default deployment mode is Standard (Deployments and
// Services, no Knative), and KServe creates no ingress (no Istio, no
// Gateway API here; users reach the predictor Service).
func config(ctx context.Context, cs kubernetes.Interface, moduleDir string) error {
	b, err := os.ReadFile(filepath.Join(moduleDir, "config", "configmap", "inferenceservice.yaml"))
	if err != nil {
		return fmt.Errorf("KServe ConfigMap: %w", err)
	}
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal(b, &cm); err != nil {
		return fmt.Errorf("KServe ConfigMap: %w", err)
	}
	if cm.Name != "inferenceservice-config" || cm.Data["ingress"] == "" || cm.Data["deploy"] == "" {
		return fmt.Errorf("KServe ConfigMap %s: not the inferenceservice-config with ingress and deploy this harness knows", cm.Name)
	}
	cm.Data["deploy"] = `{"defaultDeploymentMode": "Standard"}`
	var ingress map[string]any
	if err := json.Unmarshal([]byte(cm.Data["ingress"]), &ingress); err != nil {
		return fmt.Errorf("KServe ConfigMap ingress: %w", err)
	}
	ingress["disableIngressCreation"] = true
	ingress["disableIstioVirtualHost"] = true
	out, _ := json.Marshal(ingress)
	cm.Data["ingress"] = string(out)
	cm.Namespace = Namespace
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", Namespace, err)
	}
	if _, err := cs.CoreV1().ConfigMaps(Namespace).Create(ctx, &cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("KServe ConfigMap: %w", err)
	}
	return nil
}

// register creates KServe's webhook configurations from the module's
// config/webhook/manifests.yaml, each webhook's Service turned into a URL
// on base. Their names sort before muster's, so the apiserver calls
// KServe's pod mutator first, as in a cluster with both installed.
func register(ctx context.Context, cs kubernetes.Interface, moduleDir, base string, caBundle []byte) error {
	b, err := os.ReadFile(filepath.Join(moduleDir, "config", "webhook", "manifests.yaml"))
	if err != nil {
		return fmt.Errorf("KServe webhook manifests: %w", err)
	}
	if err := cluster.RegisterWebhooks(ctx, cs, b, base, caBundle, nil); err != nil {
		return fmt.Errorf("KServe %w", err)
	}
	return nil
}

// LLMInferenceServices is KServe's LLMInferenceService API.
var LLMInferenceServices = schema.GroupVersionResource{Group: "serving.kserve.io", Version: "v1alpha2", Resource: "llminferenceservices"}

// LLMCRDs are the module's minimal CRDs of the LLMInferenceService
// controller (LLMInferenceService, LLMInferenceServiceConfig). It needs the
// LeaderWorkerSet CRD too (e2e/lws CRDs), installed before it starts.
func LLMCRDs(moduleDir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(moduleDir, "config", "crd", "minimal", "llmisvc", "serving.kserve.io_*.yaml"))
	if err == nil && len(files) != 2 {
		err = fmt.Errorf("%d LLMInferenceService CRDs in %s, want 2", len(files), moduleDir)
	}
	return files, err
}

// StartLLM runs the LLMInferenceService controller bin (make kserve-bin:
// bin/kserve-llmisvc) as a process of c, after Start (it reads the same
// ConfigMap), with the preset KServe ships for multi-node workers
// (config/llmisvcconfig/config-llm-worker-data-parallel.yaml) in the kserve
// namespace. Its webhooks are not registered: it serves them (and needs
// a certificate for that) but nothing here calls them. It runs without
// routing (no Gateway API here): LLMInferenceServices without spec.router.
func StartLLM(ctx context.Context, c *cluster.Cluster, bin, moduleDir string) (*cluster.Process, error) {
	dyn, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(moduleDir, "config", "llmisvcconfig", "config-llm-worker-data-parallel.yaml"))
	if err != nil {
		return nil, fmt.Errorf("KServe LLM preset: %w", err)
	}
	var preset unstructured.Unstructured
	if err := yaml.Unmarshal(b, &preset.Object); err != nil {
		return nil, fmt.Errorf("KServe LLM preset: %w", err)
	}
	presets := schema.GroupVersionResource{Group: "serving.kserve.io", Version: "v1alpha2", Resource: "llminferenceserviceconfigs"}
	if _, err := dyn.Resource(presets).Namespace(Namespace).Create(ctx, &preset, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("KServe LLM preset %s: %w", preset.GetName(), err)
	}
	tmp, port, err := webhookServer(c, "kserve-llmisvc")
	if err != nil {
		return nil, err
	}
	return c.StartProcessEnv("kserve-llmisvc", bin,
		[]string{"TMPDIR=" + tmp, "POD_NAMESPACE=" + Namespace},
		"--kubeconfig="+c.Kubeconfig(), "--webhook-port="+strconv.Itoa(port),
		"--metrics-addr=0", "--health-probe-addr=0", "--leader-elect=false", "--zap-devel=false")
}

// webhookServer prepares what a KServe controller's webhook server needs
// to start: a serving certificate from the cluster CA for 127.0.0.1, where
// controller-runtime reads it ($TMPDIR/k8s-webhook-server/serving-certs,
// tls.crt and tls.key: KServe's binaries have no flag for it), and a free
// port. It returns the TMPDIR to run name with, and the port.
func webhookServer(c *cluster.Cluster, name string) (tmp string, port int, err error) {
	tmp = filepath.Join(c.StateDir(), name, "tmp")
	certDir := filepath.Join(tmp, "k8s-webhook-server", "serving-certs")
	if err := os.MkdirAll(certDir, 0o755); err != nil {
		return "", 0, fmt.Errorf("%s dir: %w", name, err)
	}
	crt, key, err := c.IssueServingCert(name+"-webhook", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return "", 0, fmt.Errorf("%s webhook cert: %w", name, err)
	}
	for src, dst := range map[string]string{crt: "tls.crt", key: "tls.key"} {
		b, err := os.ReadFile(src)
		if err == nil {
			err = os.WriteFile(filepath.Join(certDir, dst), b, 0o600)
		}
		if err != nil {
			return "", 0, fmt.Errorf("%s webhook cert: %w", name, err)
		}
	}
	port, err = cluster.FreePort()
	return tmp, port, err
}
