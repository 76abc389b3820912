package deploy_test

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/muster-dev/muster/coordinator/cli"
	"github.com/muster-dev/muster/coordinator/testcoord"
	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/test/clustertest"
)

// schedulerRunsChartConfig runs bin/scheduler with the chart's
// KubeSchedulerConfiguration and arguments, as the chart's ServiceAccount
// (only the serving port is the test's), and waits until it holds the
// chart's leader-election Lease: the configuration is one kube-scheduler
// accepts, with every plugin it names compiled in, and the chart's RBAC
// lets it sync every informer (it takes the Lease only after that) and
// write its Lease. A "forbidden" in its log fails the test as well.
func schedulerRunsChartConfig(t *testing.T, c *cluster.Cluster, a *applier) {
	objs := render(t, nil)
	kubeconfig := asComponent(t, c, a, objs, "scheduler")
	cm := find(t, objs, "ConfigMap", "muster-scheduler")
	deploy := find(t, objs, "Deployment", "muster-scheduler")
	data, _, _ := unstructured.NestedString(cm.Object, "data", "config.yaml")
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(data), &cfg); err != nil {
		t.Fatalf("the chart's scheduler configuration: %v", err)
	}
	cfg["clientConnection"].(map[string]any)["kubeconfig"] = kubeconfig
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	args := containerArgs(t, deploy)
	for i, a := range args {
		if strings.HasPrefix(a, "--config=") {
			args[i] = "--config=" + path
		}
	}
	_, port, _ := net.SplitHostPort(testcoord.FreeAddr(t))
	args = append(args,
		"--authentication-kubeconfig="+kubeconfig,
		"--authorization-kubeconfig="+kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port="+port,
	)
	p := startProc(t, "scheduler", filepath.Join(clustertest.Bins(t), "scheduler"), args...)
	deadline := time.After(60 * time.Second)
	var leader time.Time
	for leader.IsZero() || time.Since(leader) < 2*time.Second {
		if done, err := p.exited(); done {
			t.Fatalf("bin/scheduler with the chart's configuration exited: %v\n%s", err, p.output())
		}
		select {
		case <-deadline:
			t.Fatalf("bin/scheduler with the chart's configuration did not take the Lease muster/muster-scheduler in 60s\n%s", p.output())
		case <-time.After(200 * time.Millisecond):
		}
		if strings.Contains(p.output(), "forbidden") {
			t.Fatalf("bin/scheduler as the chart's ServiceAccount was refused something:\n%s", p.output())
		}
		l, err := c.Clientset().CoordinationV1().Leases(release.Namespace).Get(t.Context(), "muster-scheduler", metav1.GetOptions{})
		if leader.IsZero() && err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
			leader = time.Now() // then watch the log a little longer
		}
	}
}

// coordinatorTakesChartArgs parses the chart's coordinator arguments with
// the coordinator's own command line (stopping at -help, before anything
// starts): a flag the chart passes that the coordinator lacks fails here
// rather than in a crash-looping pod.
func coordinatorTakesChartArgs(t *testing.T) {
	for _, v := range chartValues {
		args := containerArgs(t, find(t, render(t, v.values), "Deployment", "muster-coordinator"))
		var stderr bytes.Buffer
		if code := cli.Main(append(slices.Clone(args), "-help"), &stderr); code != 0 {
			t.Errorf("values %s: coordinator %s: exit %d\n%s", v.name, strings.Join(args, " "), code, stderr.String())
		}
	}
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("the chart renders no %s %s", kind, name)
	return nil
}

func containerArgs(t *testing.T, o *unstructured.Unstructured) []string {
	t.Helper()
	containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if len(containers) == 0 {
		t.Fatalf("%s has no containers", o.GetName())
	}
	args, _, err := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
	if err != nil {
		t.Fatal(err)
	}
	return args
}
