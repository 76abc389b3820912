package e2etest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/e2e/procnode"
	"github.com/muster-dev/muster/test/clustertest"
)

// ProcessCluster starts a private control plane whose nodes run pods as
// local processes in a network namespace of their own (so Services get
// EndpointSlices), with this tree's agent and coordinator (webhook
// registered) and the given CRD files installed.
func ProcessCluster(t testing.TB, root string, crds ...string) *cluster.Cluster {
	t.Helper()
	bins := MusterBins(t, root)
	kube := clustertest.Bins(t)
	return clustertest.New(t, func(cfg *cluster.Config) {
		pcfg := procnode.DefaultConfig(kube)
		pcfg.AgentBin = filepath.Join(bins, "agent")
		if !pcfg.WithPodNetwork() {
			t.Fatal("pods need a network namespace (root and iproute2) for Services to get EndpointSlices")
		}
		cfg.Nodes = procnode.New(pcfg)
		cfg.Binaries.Coordinator = filepath.Join(bins, "coordinator")
		cfg.CRDs = append(cfg.CRDs, crds...)
	})
}

// CreateExample creates every object of deploy/examples/<file> in ns, with
// __MUSTER_REPO__ replaced by root, through the dynamic client with strict
// field validation, and returns their kinds in order.
func CreateExample(t testing.TB, c *cluster.Cluster, ns, root, file string) []string {
	t.Helper()
	return CreateFile(t, c, ns, root, filepath.Join("deploy", "examples", file))
}

// CreateFile is CreateExample for any file of the repository (rel to
// root); cluster-scoped objects are created as such, the others in ns.
func CreateFile(t testing.TB, c *cluster.Cluster, ns, root, rel string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Clientset().Discovery()))
	var kinds []string
	for _, doc := range strings.Split(strings.ReplaceAll(string(b), "__MUSTER_REPO__", root), "\n---\n") {
		var obj unstructured.Unstructured
		if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %s: %v", rel, gvk, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = dyn.Resource(m.Resource).Namespace(ns)
		}
		if _, err := ri.Create(context.Background(), &obj, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
			t.Fatalf("%s: create %s %s: %v", rel, gvk.Kind, obj.GetName(), err)
		}
		kinds = append(kinds, gvk.Kind)
	}
	return kinds
}
