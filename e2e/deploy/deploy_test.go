package deploy_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/e2e/deploy"
	"github.com/muster-dev/muster/e2e/kserve"
	"github.com/muster-dev/muster/test/clustertest"
)

func TestMain(m *testing.M) { clustertest.Main(m) }

// The release the tests render; the kustomize base is this release too.
var release = deploy.Release{Name: "muster", Namespace: "muster"}

// chartValues are the value sets every test renders the chart with.
var chartValues = []struct {
	name   string
	values map[string]any
}{
	{"defaults", nil},
	{"external-etcd", map[string]any{"etcd": map[string]any{"external": map[string]any{
		"endpoints": []any{"http://etcd-0.etcd.infra.svc:2379", "http://etcd-1.etcd.infra.svc:2379"}}}}},
	{"external-etcd-tls", map[string]any{"etcd": map[string]any{"external": map[string]any{
		"endpoints": []any{"https://etcd-0.etcd.infra.svc:2379", "https://etcd-1.etcd.infra.svc:2379"},
		"tls":       map[string]any{"secret": "infra-etcd-client"}}}}},
	{"etcd-without-tls", map[string]any{"etcd": map[string]any{"tls": map[string]any{"enabled": false}}}},
	{"certgen", map[string]any{"webhook": map[string]any{"certs": "certgen"}}},
	{"own-secret", map[string]any{
		"webhook": map[string]any{"certs": "secret", "existingSecret": "my-tls", "caBundle": "Y2E="},
		"etcd":    map[string]any{"tls": map[string]any{"existingSecret": "my-etcd-tls", "existingClientSecret": "my-etcd-client-tls"}},
	}},
	{"no-scheduler", map[string]any{"scheduler": map[string]any{"enabled": false}}},
	{"extra-args", map[string]any{
		"coordinator": map[string]any{"extraArgs": []any{"--log-level=debug"}},
		"scheduler":   map[string]any{"extraArgs": []any{"--feature-gates=GenericWorkload=true"}},
	}},
	// ServiceMonitors, the PrometheusRule and the dashboard (monitoring_test.go).
	{"monitoring", monitoringValues},
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := clustertest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func chartDir(t *testing.T) string { return filepath.Join(repoRoot(t), "deploy", "helm", "muster") }

func render(t *testing.T, values map[string]any) []*unstructured.Unstructured {
	t.Helper()
	out, err := deploy.RenderChart(chartDir(t), release, values)
	if err != nil {
		t.Fatal(err)
	}
	return objects(t, out)
}

func objects(t *testing.T, stream string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := deploy.Objects(stream)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) == 0 {
		t.Fatal("no objects")
	}
	return objs
}

func kustomize(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	out, err := deploy.Kustomize(filepath.Join(repoRoot(t), dir))
	if err != nil {
		t.Fatal(err)
	}
	return objects(t, out)
}

// TestDryRun applies every object of every way to install muster, and
// every example, to a real apiserver with server-side dry run: the
// apiserver's validation (schemas, CRD schemas, RBAC escalation checks,
// admission) is the judge.
func TestDryRun(t *testing.T) {
	root := repoRoot(t)
	// KServe's CRDs, for the KServe examples and runtimes.
	kserveDir, err := kserve.ModuleDir(t.Context(), root)
	if err != nil {
		t.Fatal(err)
	}
	var kserveCRDs []string
	for _, f := range []func(string) ([]string, error){kserve.CRDs, kserve.LLMCRDs} {
		files, err := f(kserveDir)
		if err != nil {
			t.Fatal(err)
		}
		kserveCRDs = append(kserveCRDs, files...)
	}
	c := clustertest.New(t, func(cfg *cluster.Config) {
		cfg.Nodes = nil // nothing runs; no nodes needed
		cfg.CRDs = append(cfg.CRDs, filepath.Join(root, "e2e", "deploy", "testdata", "leaderworkerset.x-k8s.io_leaderworkersets.yaml"))
		// The Prometheus Operator's, for the chart's monitoring objects.
		for _, kind := range []string{"servicemonitors", "prometheusrules"} {
			cfg.CRDs = append(cfg.CRDs, filepath.Join(root, "e2e", "deploy", "testdata", "monitoring.coreos.com_"+kind+".yaml"))
		}
		cfg.CRDs = append(cfg.CRDs, kserveCRDs...)
	})
	ctx := t.Context()
	// Namespaced objects are checked in their namespace, which must exist.
	if _, err := c.Clientset().CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: release.Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	a := newApplier(t, c)
	// muster's webhook, registered the way the coordinator registers it
	// outside a cluster, so that the examples' pods go through it.
	startWebhook(t, c)

	for _, v := range chartValues {
		t.Run("chart/"+v.name, func(t *testing.T) { a.applyAll(t, render(t, v.values)) })
	}
	for _, dir := range []string{"deploy/kustomize/base", "deploy/kustomize/overlays/external-etcd"} {
		t.Run(dir, func(t *testing.T) { a.applyAll(t, kustomize(t, dir)) })
	}
	t.Run("webhook-matches-register", func(t *testing.T) { webhookMatchesRegister(t, c, a) })
	t.Run("scheduler-runs-chart-config", func(t *testing.T) { schedulerRunsChartConfig(t, c, a) })
	t.Run("coordinator-takes-chart-args", coordinatorTakesChartArgs)
	t.Run("coordinator-runs-chart-args", func(t *testing.T) { coordinatorRunsChartArgs(t, c, a) })
	examples, err := deploy.Examples(root)
	if err != nil || len(examples) == 0 {
		t.Fatalf("no examples in deploy/examples (%v)", err)
	}
	runtimes, err := filepath.Glob(filepath.Join(root, "deploy", "kserve", "*.yaml"))
	if err != nil || len(runtimes) == 0 {
		t.Fatalf("no ClusterServingRuntimes in deploy/kserve (%v)", err)
	}
	examples = append(examples, runtimes...)
	for _, f := range examples {
		t.Run(filepath.Base(filepath.Dir(f))+"/"+filepath.Base(f), func(t *testing.T) {
			s, err := deploy.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			objs := objects(t, s)
			a.applyAll(t, objs)
			a.injectAll(t, objs)
		})
	}
}

type applier struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

func newApplier(t *testing.T, c *cluster.Cluster) *applier {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	return &applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

// applyAll server-side applies each object with dryRun: All and reports
// every object the apiserver refuses, with its message.
func (a *applier) applyAll(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		if _, err := a.apply(t.Context(), o); err != nil {
			t.Errorf("%s: %v", deploy.Describe(o), err)
		}
	}
}

func (a *applier) apply(ctx context.Context, o *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	return a.applyFor(ctx, o, []string{metav1.DryRunAll})
}

// applyFor server-side applies o; dryRun nil applies it for real.
func (a *applier) applyFor(ctx context.Context, o *unstructured.Unstructured, dryRun []string) (*unstructured.Unstructured, error) {
	gvk := o.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, err
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := o.GetNamespace()
		if ns == "" {
			ns = metav1.NamespaceDefault
		}
		ri = a.dyn.Resource(m.Resource).Namespace(ns)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return ri.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: "muster-deploy-test", Force: true, DryRun: dryRun})
}

// webhookMatchesRegister: the chart's MutatingWebhookConfiguration
// sends the apiserver exactly the pods the coordinator's own registration
// (coordinator/webhook.Register, used outside a cluster) does, with the
// same policies; only where it calls differs.
func webhookMatchesRegister(t *testing.T, c *cluster.Cluster, a *applier) {
	ctx := t.Context()
	ref, err := c.Clientset().AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, registeredName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var mwc *unstructured.Unstructured
	for _, o := range render(t, nil) {
		if o.GetKind() == "MutatingWebhookConfiguration" {
			mwc = o
		}
	}
	if mwc == nil {
		t.Fatal("the chart renders no MutatingWebhookConfiguration")
	}
	// The dry run returns the object as stored, defaults filled in, like
	// the reference.
	applied, err := a.apply(ctx, mwc)
	if err != nil {
		t.Fatal(err)
	}
	var got admissionregistrationv1.MutatingWebhookConfiguration
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(applied.Object, &got); err != nil {
		t.Fatal(err)
	}
	strip := func(ws []admissionregistrationv1.MutatingWebhook) []admissionregistrationv1.MutatingWebhook {
		out := slices.Clone(ws)
		for i := range out {
			out[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{}
		}
		return out
	}
	g, w := strip(got.Webhooks), strip(ref.Webhooks)
	if !equalJSON(t, g, w) {
		t.Errorf("the chart's webhook differs from coordinator/webhook.Register's (client config aside):\nchart:    %s\nregister: %s", toJSON(t, g), toJSON(t, w))
	}
}

// TestKustomizeBaseIsTheChart: deploy/kustomize/base/muster.yaml is the
// chart rendered with certs=certgen (no secrets in the repository), so the
// two ways to install cannot drift. MUSTER_UPDATE=1 rewrites it.
func TestKustomizeBaseIsTheChart(t *testing.T) {
	rel := release
	rel.Service = "kustomize"
	out, err := deploy.RenderChart(chartDir(t), rel, map[string]any{"webhook": map[string]any{"certs": "certgen"}})
	if err != nil {
		t.Fatal(err)
	}
	want := "# Generated from deploy/helm/muster (release muster, namespace muster,\n" +
		"# webhook.certs=certgen) by `MUSTER_UPDATE=1 go test ./e2e/deploy -run KustomizeBase`.\n" +
		"# Do not edit: change the chart and regenerate.\n" + out
	path := filepath.Join(repoRoot(t), "deploy", "kustomize", "base", "muster.yaml")
	if os.Getenv("MUSTER_UPDATE") != "" {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s is not the chart's rendering; run MUSTER_UPDATE=1 go test ./e2e/deploy -run KustomizeBase", path)
	}
}

// TestChartLint runs Helm's own chart checks (helm lint) for every value set.
func TestChartLint(t *testing.T) {
	for _, v := range chartValues {
		t.Run(v.name, func(t *testing.T) {
			l := lint.All(chartDir(t), v.values, release.Namespace, false)
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("helm lint: %s", m)
				}
			}
		})
	}
}

// TestChartShape checks what the apiserver does not: what a reviewer of
// the chart would ask for.
func TestChartShape(t *testing.T) {
	for _, v := range chartValues {
		t.Run(v.name, func(t *testing.T) {
			objs := render(t, v.values)
			pdbs := map[string]bool{}
			for _, o := range objs {
				if o.GetKind() == "PodDisruptionBudget" {
					pdbs[o.GetName()] = true
				}
			}
			for _, o := range objs {
				switch o.GetKind() {
				case "Deployment", "StatefulSet":
					checkWorkload(t, o, pdbs)
				case "ClusterRole", "Role":
					checkRules(t, o)
				}
			}
		})
	}
}

func checkWorkload(t *testing.T, o *unstructured.Unstructured, pdbs map[string]bool) {
	t.Helper()
	if !pdbs[o.GetName()] {
		t.Errorf("%s has no PodDisruptionBudget", deploy.Describe(o))
	}
	var spec corev1.PodSpec
	raw, _, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec")
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &spec); err != nil {
		t.Fatal(err)
	}
	for _, c := range spec.Containers {
		what := deploy.Describe(o) + " container " + c.Name
		if c.ReadinessProbe == nil || c.LivenessProbe == nil {
			t.Errorf("%s: want readiness and liveness probes", what)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("%s: want cpu and memory requests", what)
		}
		if c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
			t.Errorf("%s: want a read-only root filesystem", what)
		}
	}
}

// checkRules: no wildcards and no verbs that change anything cluster-wide
// beyond the few the code needs.
func checkRules(t *testing.T, o *unstructured.Unstructured) {
	t.Helper()
	rules, _, _ := unstructured.NestedSlice(o.Object, "rules")
	for _, r := range rules {
		rm := r.(map[string]any)
		for _, field := range []string{"apiGroups", "resources", "verbs"} {
			vals, _, _ := unstructured.NestedStringSlice(rm, field)
			if slices.Contains(vals, "*") {
				t.Errorf("%s: wildcard in %s: %v", deploy.Describe(o), field, rm)
			}
		}
		resources, _, _ := unstructured.NestedStringSlice(rm, "resources")
		verbs, _, _ := unstructured.NestedStringSlice(rm, "verbs")
		names, _, _ := unstructured.NestedStringSlice(rm, "resourceNames")
		for _, verb := range verbs {
			if (verb == "update" || verb == "patch" || verb == "delete") && len(names) == 0 && !slices.Equal(resources, []string{"pods/status"}) {
				t.Errorf("%s: %s on %v for any name; name the objects (resourceNames)", deploy.Describe(o), verb, resources)
			}
		}
	}
}

func toJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func equalJSON(t *testing.T, a, b any) bool { return toJSON(t, a) == toJSON(t, b) }
