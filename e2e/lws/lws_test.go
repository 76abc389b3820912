package lws_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/e2e/e2etest"
	"github.com/muster-dev/muster/e2e/lws"
	"github.com/muster-dev/muster/test/clustertest"
)

func TestMain(m *testing.M) { clustertest.Main(m) }

const (
	lwsName = "tp-lws"
	groups  = 2
	size    = 4
)

// TestLeaderWorkerSet: a LeaderWorkerSet of 2 groups x 4 pods, made by the
// real LWS controller, becomes two muster groups: injected, gang-scheduled
// per group (into one rack each), ranked by LWS's worker index, running the
// real torch model and answering at every pod's endpoint. Deleting a worker
// of one group heals that group in place; the other never notices.
func TestLeaderWorkerSet(t *testing.T) {
	e2etest.TorchPython(t)
	root, err := clustertest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	kubeBins := clustertest.Bins(t)
	began := time.Now()
	lwsBin, moduleDir, err := lws.Build(t.Context(), root, kubeBins)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Logf("make lws-bin took %s", d.Round(time.Second))
	}
	crds, err := lws.CRDs(moduleDir)
	if err != nil {
		t.Fatal(err)
	}
	c := e2etest.ProcessCluster(t, root, crds...)
	began = time.Now()
	if _, err := lws.Start(t.Context(), c, lwsBin, moduleDir); err != nil {
		t.Fatal(err)
	}
	t.Logf("LWS controller running, its webhooks reachable, in %s", time.Since(began).Round(time.Millisecond))

	cs := c.Clientset()
	ns := clustertest.Namespace(t, c)
	gang := e2etest.WatchGang(t, cs, ns, size, func(p *v1.Pod) string {
		return p.Labels[lws.LabelName] + "/" + p.Labels[lws.LabelGroupIndex]
	})

	start := time.Now()
	if kinds := e2etest.CreateExample(t, c, ns, root, "lws-torch.yaml"); strings.Join(kinds, ",") != "Service,LeaderWorkerSet" {
		t.Fatalf("lws-torch.yaml: kinds %v, want a Service and a LeaderWorkerSet", kinds)
	}
	pods := waitPods(t, c, ns, 3*time.Minute, "both groups Ready", allReady)
	t.Logf("%d groups x %d pods created by LWS, injected, gang-scheduled and Ready in %s", groups, size, time.Since(start).Round(time.Millisecond))

	racks := rackOf(t, cs)
	for gi := 0; gi < groups; gi++ {
		var rack string
		for _, p := range inGroup(pods, gi) {
			checkMember(t, cs, ns, p, "0")
			if rack == "" {
				rack = racks[p.Spec.NodeName]
			} else if racks[p.Spec.NodeName] != rack {
				t.Errorf("group %d spans racks %s and %s (%s on %s): muster.dev/topology-key should keep it in one", gi, rack, racks[p.Spec.NodeName], p.Name, p.Spec.NodeName)
			}
		}
	}
	if v := gang.Violations(); len(v) > 0 {
		t.Errorf("pods bound before their whole group existed:\n  %s", strings.Join(v, "\n  "))
	}

	// The Service over all 8 pods: every address answers with its own
	// group's model (both have the same weights, so the same answer).
	addrs := groupAddrs(t, cs, ns, pods)
	var first *e2etest.Prediction
	for gi := 0; gi < groups; gi++ {
		for _, addr := range addrs[gi] {
			got, hdr := e2etest.Predict(t, addr)
			if got.WorldSize != size || len(got.Outputs) != 2 || hdr.Get("X-Muster-Generation") != "0" {
				t.Fatalf("group %d at %s: prediction %+v, generation %q; want world size %d, 2 outputs, generation 0", gi, addr, got, hdr.Get("X-Muster-Generation"), size)
			}
			if first == nil {
				first = &got
			} else if got.Outputs[0].NextToken != first.Outputs[0].NextToken || got.Outputs[1].NextToken != first.Outputs[1].NextToken {
				t.Errorf("group %d at %s answered %+v, another address %+v", gi, addr, got, *first)
			}
		}
	}

	// A worker of group 1 is deleted. LWS (restartPolicy None) recreates
	// that pod alone; muster restarts group 1 in place, in a new
	// generation with the same ranks. Group 0 keeps answering throughout,
	// in generation 0.
	victim := fmt.Sprintf("%s-1-2", lwsName)
	before := map[string]types.UID{}
	for _, p := range pods {
		before[p.Name] = p.UID
	}
	if _, ok := before[victim]; !ok {
		t.Fatalf("no pod %s among %v", victim, names(pods))
	}
	probe := e2etest.StartProbe(addrs[0])
	healStart := time.Now()
	if err := cs.CoreV1().Pods(ns).Delete(context.Background(), victim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	pods = waitPods(t, c, ns, 3*time.Minute, "group 1 healed", func(ps []v1.Pod) bool {
		for _, p := range ps {
			if p.Name == victim && p.UID == before[victim] {
				return false // still the old pod
			}
		}
		return allReady(ps)
	})
	healed := addrsOf(t, groupAddrs(t, cs, ns, pods)[1])
	for _, addr := range healed {
		got, hdr := e2etest.Predict(t, addr)
		if g := hdr.Get("X-Muster-Generation"); g == "0" || g == "" {
			t.Errorf("group 1 at %s answers in generation %q after a member was replaced, want a new one", addr, g)
		}
		if got.Outputs[0].NextToken != first.Outputs[0].NextToken {
			t.Errorf("group 1 at %s after healing answered %+v, before %+v", addr, got, *first)
		}
	}
	t.Logf("worker %s deleted: group 1 re-formed and answering at its %d pods in %s", victim, size, time.Since(healStart).Round(time.Millisecond))
	ok, failed, gens := probe.Stop()
	if ok == 0 || len(failed) > 0 || len(gens) != 1 || gens["0"] == 0 {
		t.Errorf("group 0 while group 1 healed: %d answers, generations %v, %d failures %v; want every request answered in generation 0", ok, gens, len(failed), failed)
	} else {
		t.Logf("group 0 answered all %d requests during the heal, in generation 0", ok)
	}
	for _, p := range pods {
		gi, _ := strconv.Atoi(p.Labels[lws.LabelGroupIndex])
		switch {
		case p.Name == victim:
			checkMember(t, cs, ns, p, "")
		case gi == 0:
			checkMember(t, cs, ns, p, "0")
			if p.UID != before[p.Name] {
				t.Errorf("%s of group 0 was recreated", p.Name)
			}
		default:
			// Restarted in place: the same pod, a later generation.
			checkMember(t, cs, ns, p, "")
			if p.UID != before[p.Name] {
				t.Errorf("%s of group 1 was recreated; only %s should have been (restartPolicy None)", p.Name, victim)
			}
		}
	}
	if v := gang.Violations(); len(v) > 0 {
		t.Errorf("pods bound before their whole group existed:\n  %s", strings.Join(v, "\n  "))
	}
}

// checkMember checks that p was injected, joined the group LWS's labels
// name (tp-lws-<group-index>, size from LWS's size annotation) with its
// worker index as ordinal, and last launched its runtime with that rank in
// generation gen ("" for any but 0).
func checkMember(t *testing.T, cs kubernetes.Interface, ns string, p v1.Pod, gen string) {
	t.Helper()
	if p.Spec.SchedulerName != "muster-scheduler" || len(p.Spec.InitContainers) == 0 || p.Spec.Containers[0].Command[0] != "/muster/bin/agent" {
		t.Errorf("%s was not injected: scheduler %q, %d init containers, command %v", p.Name, p.Spec.SchedulerName, len(p.Spec.InitContainers), p.Spec.Containers[0].Command)
		return
	}
	worker := p.Labels[lws.LabelWorkerIndex]
	want := map[string]string{
		"MUSTER_GROUP":   lwsName + "-" + p.Labels[lws.LabelGroupIndex],
		"MUSTER_SIZE":    strconv.Itoa(size),
		"MUSTER_ORDINAL": worker,
	}
	for _, e := range p.Spec.Containers[0].Env {
		if w, ok := want[e.Name]; ok {
			if e.Value != w {
				t.Errorf("%s (labels %s=%s %s=%s): %s=%q, want %q", p.Name, lws.LabelGroupIndex, p.Labels[lws.LabelGroupIndex], lws.LabelWorkerIndex, worker, e.Name, e.Value, w)
			}
			delete(want, e.Name)
		}
	}
	if len(want) > 0 {
		t.Errorf("%s: no %v in its env", p.Name, want)
	}
	g, rank, world := e2etest.LastRank(t, cs, ns, p.Name)
	if rank != worker || world != strconv.Itoa(size) || (gen != "" && g != gen) || (gen == "" && (g == "" || g == "0")) {
		t.Errorf("%s: rank %s of %s in generation %s; want rank %s (its worker index) of %d, generation %s", p.Name, rank, world, g, worker, size, orAny(gen))
	}
}

func orAny(gen string) string {
	if gen == "" {
		return "> 0"
	}
	return gen
}

// waitPods waits until done holds for the pods of the LeaderWorkerSet
// and returns them; on timeout it says where each pod is.
func waitPods(t *testing.T, c *cluster.Cluster, ns string, timeout time.Duration, what string, done func([]v1.Pod) bool) []v1.Pod {
	t.Helper()
	cs := c.Clientset()
	var pods []v1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := c.Err(); err != nil {
			return false, err
		}
		list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: lws.LabelName + "=" + lwsName})
		if err != nil {
			return false, nil
		}
		pods = list.Items
		return done(pods), nil
	})
	if err != nil {
		var b strings.Builder
		for _, p := range pods {
			fmt.Fprintf(&b, "\n  %s group=%s worker=%s node=%q ip=%s phase=%s conditions=%s", p.Name, p.Labels[lws.LabelGroupIndex], p.Labels[lws.LabelWorkerIndex], p.Spec.NodeName, p.Status.PodIP, p.Status.Phase, e2etest.Conditions(&p))
			logs, _ := cs.CoreV1().Pods(ns).GetLogs(p.Name, &v1.PodLogOptions{Container: "model"}).DoRaw(context.Background())
			fmt.Fprintf(&b, "\n    log tail: %s", e2etest.Tail(string(logs), 6))
		}
		if evs, err := cs.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{}); err == nil {
			for _, e := range evs.Items {
				if e.Type == v1.EventTypeWarning {
					fmt.Fprintf(&b, "\n  event %s/%s: %s: %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
				}
			}
		}
		for _, name := range []string{"scheduler", "lws-controller", "coordinator"} {
			log, _ := os.ReadFile(filepath.Join(c.Dir(), "logs", name+".log"))
			fmt.Fprintf(&b, "\n  %s log tail:\n      %s", name, e2etest.Tail(string(log), 12))
		}
		t.Fatalf("%s: not within %s (%v):%s", what, timeout, err, b.String())
	}
	return pods
}

// allReady: every group has its size of live pods, all Ready.
func allReady(pods []v1.Pod) bool {
	for gi := 0; gi < groups; gi++ {
		ps := inGroup(pods, gi)
		if len(ps) != size {
			return false
		}
		for i := range ps {
			if ps[i].DeletionTimestamp != nil || !e2etest.PodReady(&ps[i]) {
				return false
			}
		}
	}
	return true
}

func inGroup(pods []v1.Pod, gi int) []v1.Pod {
	var out []v1.Pod
	for _, p := range pods {
		if p.Labels[lws.LabelGroupIndex] == strconv.Itoa(gi) {
			out = append(out, p)
		}
	}
	return out
}

func names(pods []v1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	sort.Strings(out)
	return out
}

// rackOf maps node names to their rack label.
func rackOf(t *testing.T, cs kubernetes.Interface) map[string]string {
	t.Helper()
	nodes, err := cs.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, n := range nodes.Items {
		out[n.Name] = n.Labels["topology.muster.dev/rack"]
	}
	return out
}

// groupAddrs waits until the Service's EndpointSlices list every pod of
// pods as a ready endpoint, and returns their addresses (as kube-proxy
// would see them) by group index.
func groupAddrs(t *testing.T, cs kubernetes.Interface, ns string, pods []v1.Pod) map[int][]string {
	t.Helper()
	group := map[string]int{}
	for _, p := range pods {
		group[p.Status.PodIP], _ = strconv.Atoi(p.Labels[lws.LabelGroupIndex])
	}
	var out map[int][]string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=tp-lws-api"})
		if err != nil {
			return false, nil
		}
		out = map[int][]string{}
		n := 0
		for _, sl := range list.Items {
			if len(sl.Ports) == 0 || sl.Ports[0].Port == nil {
				continue
			}
			for _, ep := range sl.Endpoints {
				if len(ep.Addresses) == 0 || ep.Conditions.Ready == nil || !*ep.Conditions.Ready {
					continue
				}
				gi, ok := group[ep.Addresses[0]]
				if !ok {
					continue // a pod that is gone; the slice catches up
				}
				out[gi] = append(out[gi], fmt.Sprintf("%s:%d", ep.Addresses[0], *sl.Ports[0].Port))
				n++
			}
		}
		return n == len(pods), nil
	})
	if err != nil {
		t.Fatalf("Service tp-lws-api: ready endpoints by group %v, want all %d pods", out, len(pods))
	}
	return out
}

func addrsOf(t *testing.T, addrs []string) []string {
	t.Helper()
	if len(addrs) != size {
		t.Fatalf("%d addresses %v, want %d", len(addrs), addrs, size)
	}
	return addrs
}
