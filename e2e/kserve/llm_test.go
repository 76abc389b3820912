package kserve_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"github.com/muster-dev/muster/e2e/e2etest"
	"github.com/muster-dev/muster/e2e/kserve"
	"github.com/muster-dev/muster/e2e/lws"
	"github.com/muster-dev/muster/test/clustertest"
)

const (
	llmName = "tp-llm"
	llmLWS  = llmName + "-kserve-mn" // the LeaderWorkerSet KServe makes
)

// TestLLMInferenceService runs KServe's LLMInferenceService controller
// with the LeaderWorkerSet controller: an LLMInferenceService of 4 pods of
// the torch model (deploy/examples/kserve-llm-torch.yaml), annotated
// through spec.annotations, is one muster group, gang-scheduled, the
// leader rank 0, answering at KServe's workload Service and Ready; a
// worker deleted, LWS recreates the group (KServe's restart policy) and
// muster forms it again.
func TestLLMInferenceService(t *testing.T) {
	e2etest.TorchPython(t)
	root, err := clustertest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	kubeBins := clustertest.Bins(t)
	bin, moduleDir, err := kserve.Build(t.Context(), root, kubeBins)
	if err != nil {
		t.Fatal(err)
	}
	lwsBin, lwsDir, err := lws.Build(t.Context(), root, kubeBins)
	if err != nil {
		t.Fatal(err)
	}
	var crds []string
	for _, f := range []func(string) ([]string, error){kserve.CRDs, kserve.LLMCRDs} {
		files, err := f(moduleDir)
		if err != nil {
			t.Fatal(err)
		}
		crds = append(crds, files...)
	}
	lwsCRDs, err := lws.CRDs(lwsDir)
	if err != nil {
		t.Fatal(err)
	}
	c := e2etest.ProcessCluster(t, root, append(crds, lwsCRDs...)...)
	if _, err := lws.Start(t.Context(), c, lwsBin, lwsDir); err != nil {
		t.Fatal(err)
	}
	if _, err := kserve.Start(t.Context(), c, bin, moduleDir); err != nil {
		t.Fatal(err)
	}
	if _, err := kserve.StartLLM(t.Context(), c, sibling(bin, "kserve-llmisvc"), moduleDir); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{c: c, root: root, cs: c.Clientset(), dyn: dyn}
	ns := clustertest.Namespace(t, c)
	gang := e2etest.WatchGang(t, e.cs, ns, size, func(p *v1.Pod) string {
		return p.Labels[lws.LabelName] + "-" + p.Labels[lws.LabelGroupIndex]
	})

	start := time.Now()
	if kinds := e2etest.CreateExample(t, c, ns, root, "kserve-llm-torch.yaml"); strings.Join(kinds, ",") != "LLMInferenceService" {
		t.Fatalf("kserve-llm-torch.yaml: kinds %v, want an LLMInferenceService", kinds)
	}
	pods := e.waitLLMPods(t, ns, 4*time.Minute, "4 pods Ready", nil)
	podsReady := time.Since(start)
	e.waitLLMReady(t, ns)
	t.Logf("LLMInferenceService: 4 pods Ready %s after apply, the LLMInferenceService Ready %s after", podsReady.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
	e.checkLLMGroup(t, ns, pods, "0")
	if v := gang.Violations(); len(v) > 0 {
		t.Errorf("pods bound before their whole group existed:\n  %s", strings.Join(v, "\n  "))
	}
	addr := e.llmAddr(t, ns)
	if got, hdr := e2etest.Predict(t, addr); got.WorldSize != size {
		t.Errorf("KServe's workload Service at %s answered from world size %d (generation %q), want %d", addr, got.WorldSize, hdr.Get("X-Muster-Generation"), size)
	}

	// A worker deleted: LWS (KServe sets RecreateGroupOnPodRestart)
	// recreates the group's pods; muster gang-schedules and forms it again.
	victim := llmLWS + "-0-2"
	old := map[string]string{}
	for _, p := range pods {
		old[p.Name] = string(p.UID)
	}
	healStart := time.Now()
	if err := e.cs.CoreV1().Pods(ns).Delete(context.Background(), victim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	pods = e.waitLLMPods(t, ns, 4*time.Minute, "the group recreated and Ready", func(p v1.Pod) bool { return old[p.Name] != string(p.UID) })
	e.waitLLMReady(t, ns)
	addr = e.llmAddr(t, ns)
	got, _ := e2etest.Predict(t, addr)
	t.Logf("LLMInferenceService: worker %s deleted: LWS recreated the group, muster formed it again, answering (world size %d) %s after the delete", victim, got.WorldSize, time.Since(healStart).Round(100*time.Millisecond))
	if got.WorldSize != size {
		t.Errorf("after the recreate: world size %d, want %d", got.WorldSize, size)
	}
	e.checkLLMGroup(t, ns, pods, "")
	if v := gang.Violations(); len(v) > 0 {
		t.Errorf("pods bound before their whole group existed:\n  %s", strings.Join(v, "\n  "))
	}
}

// sibling is the file name in bin's directory.
func sibling(bin, name string) string { return filepath.Join(filepath.Dir(bin), name) }

// waitLLMPods waits for the LWS's 4 pods, all Ready (and, with fresh,
// every one passing it) and returns them.
func (e *env) waitLLMPods(t *testing.T, ns string, timeout time.Duration, what string, fresh func(v1.Pod) bool) []v1.Pod {
	t.Helper()
	var pods []v1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := e.c.Err(); err != nil {
			return false, err
		}
		list, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: lws.LabelName + "=" + llmLWS})
		if err != nil {
			return false, nil
		}
		pods = list.Items
		if len(pods) != size {
			return false, nil
		}
		for i := range pods {
			if pods[i].DeletionTimestamp != nil || !e2etest.PodReady(&pods[i]) || (fresh != nil && !fresh(pods[i])) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		_, why := e.llmReady(context.Background(), ns)
		e.fail(t, ns, fmt.Sprintf("%s: not within %s (%v); LLMInferenceService: %s", what, timeout, err, why))
	}
	return pods
}

// checkLLMGroup: every pod injected, in group <lws>-0 of size 4, its rank
// its LWS worker index (the leader 0), in muster generation gen ("" for
// any).
func (e *env) checkLLMGroup(t *testing.T, ns string, pods []v1.Pod, gen string) {
	t.Helper()
	for _, p := range pods {
		c := p.Spec.Containers[0]
		if p.Spec.SchedulerName != "muster-scheduler" || c.Command[0] != "/muster/bin/agent" {
			t.Errorf("%s was not injected: scheduler %q, command %v", p.Name, p.Spec.SchedulerName, c.Command)
			continue
		}
		env := map[string]string{}
		for _, ev := range c.Env {
			env[ev.Name] = ev.Value
		}
		worker := p.Labels[lws.LabelWorkerIndex]
		if env["MUSTER_GROUP"] != llmLWS+"-0" || env["MUSTER_SIZE"] != strconv.Itoa(size) || env["MUSTER_ORDINAL"] != worker {
			t.Errorf("%s: MUSTER_GROUP=%q MUSTER_SIZE=%q MUSTER_ORDINAL=%q; want %s-0, %d, its worker index %s", p.Name, env["MUSTER_GROUP"], env["MUSTER_SIZE"], env["MUSTER_ORDINAL"], llmLWS, size, worker)
		}
		g, rank, world, err := e2etest.RankFromContainerLogs(e.cs, ns, p.Name, c.Name)
		if err != nil {
			t.Error(err)
			continue
		}
		if rank != worker || world != strconv.Itoa(size) || (gen != "" && g != gen) {
			t.Errorf("%s: rank %s of %s in generation %s; want rank %s (its worker index) of %d, generation %s", p.Name, rank, world, g, worker, size, orAny(gen))
		}
	}
}

// llmAddr is the ready endpoint of KServe's workload Service
// (<name>-kserve-workload-svc, the leader's port 8000).
func (e *env) llmAddr(t *testing.T, ns string) string {
	t.Helper()
	var addr string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := e.cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + llmName + "-kserve-workload-svc"})
		if err != nil {
			return false, nil
		}
		for _, sl := range list.Items {
			for _, ep := range sl.Endpoints {
				if len(sl.Ports) > 0 && sl.Ports[0].Port != nil && len(ep.Addresses) > 0 && ep.Conditions.Ready != nil && *ep.Conditions.Ready {
					addr = fmt.Sprintf("%s:%d", ep.Addresses[0], *sl.Ports[0].Port)
					return true, nil
				}
			}
		}
		return false, nil
	})
	if err != nil {
		e.fail(t, ns, "Service "+llmName+"-kserve-workload-svc: no ready endpoint")
	}
	return addr
}

func (e *env) waitLLMReady(t *testing.T, ns string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		ready, _ := e.llmReady(ctx, ns)
		return ready, nil
	})
	if err != nil {
		_, why := e.llmReady(context.Background(), ns)
		e.fail(t, ns, "LLMInferenceService not Ready within 2m: "+why)
	}
}

func (e *env) llmReady(ctx context.Context, ns string) (bool, string) {
	obj, err := e.dyn.Resource(kserve.LLMInferenceServices).Namespace(ns).Get(ctx, llmName, metav1.GetOptions{})
	if err != nil {
		return false, err.Error()
	}
	status, why := conditions(obj, "Ready")
	return status == "True", why
}
