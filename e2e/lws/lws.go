// Package lws runs the LeaderWorkerSet controller (sigs.k8s.io/lws, built
// from its own module in tools/lws into bin/lws-controller by `make
// lws-bin`) against a local control plane (e2e/cluster), as its release
// manifests would run it in a cluster: its CRD, its webhooks (LWS's pod
// webhook sets the group-index and worker-index labels that muster reads),
// no leader election. Its webhook server listens on loopback with a
// certificate from the cluster CA, and the webhook configurations point the
// apiserver there by URL instead of through a Service.
package lws

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/muster-dev/muster/e2e/cluster"
)

// Resource is the LeaderWorkerSet API.
var Resource = schema.GroupVersionResource{Group: "leaderworkerset.x-k8s.io", Version: "v1", Resource: "leaderworkersets"}

// The pod labels and annotation LWS v0.7.0 sets
// (api/leaderworkerset/v1/leaderworkerset_types.go).
const (
	LabelName        = "leaderworkerset.sigs.k8s.io/name"
	LabelGroupIndex  = "leaderworkerset.sigs.k8s.io/group-index"
	LabelWorkerIndex = "leaderworkerset.sigs.k8s.io/worker-index"
	AnnotationSize   = "leaderworkerset.sigs.k8s.io/size"
)

// configPrefix names LWS's webhook configurations as its release manifests
// do (config/default: namePrefix lws-). The apiserver calls mutating
// webhooks in the order of their configurations' names, so LWS's pod
// webhook, which adds the labels, runs before muster's ("muster").
const configPrefix = "lws-"

// Build brings bin/lws-controller up to date (`make lws-bin`: built only
// when missing or older than tools/lws/go.mod) in binDir and returns its
// path and the directory of the sigs.k8s.io/lws module (CRDs, webhook
// manifests).
func Build(ctx context.Context, repoRoot, binDir string) (bin, moduleDir string, err error) {
	cmd := exec.CommandContext(ctx, "make", "-s", "-C", repoRoot, "lws-bin", "BIN="+binDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("build the LWS controller (make lws-bin BIN=%s): %w\n%s", binDir, err, out)
	}
	cmd = exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/lws")
	cmd.Dir = filepath.Join(repoRoot, "tools", "lws")
	out, err := cmd.Output()
	if err != nil {
		return "", "", fmt.Errorf("find the sigs.k8s.io/lws module (go list -m in tools/lws): %w", err)
	}
	return filepath.Join(binDir, "lws-controller"), strings.TrimSpace(string(out)), nil
}

// CRDs are the module's CustomResourceDefinition files, for
// cluster.Config.CRDs.
func CRDs(moduleDir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(moduleDir, "config", "crd", "bases", "*.yaml"))
	if err == nil && len(files) == 0 {
		err = fmt.Errorf("no CRDs in %s/config/crd/bases", moduleDir)
	}
	return files, err
}

// Start runs the controller bin as a process of c (the LWS CRD must be
// installed: see CRDs) and registers its webhooks. It returns once the
// apiserver reaches them: a server-side dry run of a LeaderWorkerSet
// passes LWS's defaulting and validating webhooks.
func Start(ctx context.Context, c *cluster.Cluster, bin, moduleDir string) (*cluster.Process, error) {
	dir := filepath.Join(c.StateDir(), "lws")
	certDir := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certDir, 0o755); err != nil {
		return nil, fmt.Errorf("lws dir: %w", err)
	}
	// controller-runtime reads tls.crt and tls.key from its cert dir.
	crt, key, err := c.IssueServingCert("lws-webhook", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("lws webhook cert: %w", err)
	}
	for src, dst := range map[string]string{crt: "tls.crt", key: "tls.key"} {
		b, err := os.ReadFile(src)
		if err == nil {
			err = os.WriteFile(filepath.Join(certDir, dst), b, 0o600)
		}
		if err != nil {
			return nil, fmt.Errorf("lws webhook cert: %w", err)
		}
	}
	port, err := cluster.FreePort()
	if err != nil {
		return nil, err
	}
	// Internal cert management off (it would write a Secret in lws-system
	// and patch the webhook configurations itself); metrics and health
	// probes off: nothing scrapes them here.
	config := fmt.Sprintf(`apiVersion: config.lws.x-k8s.io/v1alpha1
kind: Configuration
webhook: {host: 127.0.0.1, port: %d, certDir: %s}
metrics: {bindAddress: "0"}
health: {healthProbeBindAddress: "0"}
leaderElection: {leaderElect: false}
internalCertManagement: {enable: false}
`, port, certDir)
	configFile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		return nil, fmt.Errorf("lws config: %w", err)
	}
	p, err := c.StartProcess("lws-controller", bin,
		"--config="+configFile, "--kubeconfig="+c.Kubeconfig(), "--leader-elect=false", "--zap-devel=false")
	if err != nil {
		return nil, err
	}
	caBundle, err := os.ReadFile(c.CAFile())
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	base := "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := register(ctx, c.Clientset(), moduleDir, base, caBundle); err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		return nil, err
	}
	probe := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
		"metadata": map[string]any{"name": "webhook-probe"},
		"spec": map[string]any{"leaderWorkerTemplate": map[string]any{"workerTemplate": map[string]any{
			"spec": map[string]any{"containers": []any{map[string]any{"name": "c", "image": "x"}}}}}},
	}}
	var last error
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case <-p.Done():
			return false, fmt.Errorf("lws-controller exited: %v (log %s)", p.ExitErr(), p.Log)
		default:
		}
		_, last = dyn.Resource(Resource).Namespace("default").Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return last == nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("LWS webhooks at %s not reachable (last dry run: %v): %w; log %s", base, last, err, p.Log)
	}
	return p, nil
}

// register creates LWS's webhook configurations from the module's
// config/webhook: manifests.yaml with the patches its kustomization
// applies (the pod webhooks only see pods labelled with an LWS name), each
// webhook's Service path turned into a URL on base.
func register(ctx context.Context, cs kubernetes.Interface, moduleDir, base string, caBundle []byte) error {
	whDir := filepath.Join(moduleDir, "config", "webhook")
	b, err := os.ReadFile(filepath.Join(whDir, "manifests.yaml"))
	if err != nil {
		return fmt.Errorf("LWS webhook manifests: %w", err)
	}
	err = cluster.RegisterWebhooks(ctx, cs, b, base, caBundle, func(config any) error {
		switch c := config.(type) {
		case *admissionregistrationv1.MutatingWebhookConfiguration:
			c.Name = configPrefix + c.Name
			return patch(filepath.Join(whDir, "mutating-patch.yaml"), c.Webhooks)
		case *admissionregistrationv1.ValidatingWebhookConfiguration:
			c.Name = configPrefix + c.Name
			return patch(filepath.Join(whDir, "validating-patch.yaml"), c.Webhooks)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("LWS %w", err)
	}
	return nil
}

// patch applies a kustomize JSON 6902 patch file made only of
// "replace /webhooks/N" operations, the form LWS's config/webhook uses.
func patch[W any](file string, webhooks []W) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("LWS webhook patch: %w", err)
	}
	var ops []struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value W      `json:"value"`
	}
	if err := yaml.UnmarshalStrict(b, &ops); err != nil {
		return fmt.Errorf("LWS webhook patch %s: %w", file, err)
	}
	for _, op := range ops {
		i, err := strconv.Atoi(strings.TrimPrefix(op.Path, "/webhooks/"))
		if op.Op != "replace" || !strings.HasPrefix(op.Path, "/webhooks/") || err != nil || i < 0 || i >= len(webhooks) {
			return fmt.Errorf("LWS webhook patch %s: cannot apply %s %s", file, op.Op, op.Path)
		}
		webhooks[i] = op.Value
	}
	return nil
}
