package kube

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	schedulingv1beta1 "k8s.io/api/scheduling/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/e2e/e2etest"
	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/test/clustertest"
	"github.com/muster-dev/muster/test/podbuilder"
)

// ranksFollowPlacement: four pods annotated muster.dev/rank-order: topology
// (racks: node-0, node-1 in rack-a; node-2, node-3 in rack-b), pinned so
// that ordinals and racks interleave (p-0 a, p-1 b, p-2 a, p-3 b). The
// scheduler writes each member's rack before binding it, the agent passes it
// to the coordinator, and ranks come out rack by rack with ordinal 0 as
// rank 0: p-0 0, p-2 1, p-1 2, p-3 3. Then p-1's runtime fails once: the
// group restarts in place (generation 1, same ranks) on the same pods and
// nodes, while a second gang that needs those nodes stays Pending
// throughout.
func ranksFollowPlacement(t *testing.T, c *cluster.Cluster) {
	cs := c.Clientset()
	ns := clustertest.Namespace(t, c)
	nodeOf := []string{"node-0", "node-2", "node-1", "node-3"}
	wantRank := map[string]string{"p-0": "0", "p-2": "1", "p-1": "2", "p-3": "3"}
	// Ordinal 1 fails once, in generation 0; everyone else runs on.
	prog := `import os, sys, time
print("rank %s of %s" % (os.environ["RANK"], os.environ["WORLD_SIZE"]), flush=True)
if os.environ["MUSTER_ORDINAL"] == "1" and os.environ["MUSTER_GENERATION"] == "0":
    time.sleep(1); sys.exit(3)
time.sleep(3600)`
	for i, node := range nodeOf {
		pod := podbuilder.MakePod().Namespace(ns).Name(fmt.Sprintf("p-%d", i)).
			Group("placed").PodIndex(i).Inject().Size(4).
			Annotation(podapi.AnnotationRankOrder, podapi.RankOrderTopology).Annotation(podapi.AnnotationRankTopologyKey, cluster.RackLabel).
			NodeSelector(map[string]string{"kubernetes.io/hostname": node}).
			Container("model", "python:3.11-slim").Command("python3", "-c", prog).GPU(8).Obj()
		if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Both generations' ranks, from the agents' logs.
	ranksAt := func(gen string) map[string]string {
		out := map[string]string{}
		for name := range wantRank {
			if g, r, _, err := e2etest.RankFromLogs(cs, ns, name); err == nil && g == gen {
				out[name] = r
			}
		}
		return out
	}
	waitRanks := func(gen string) map[string]string {
		var got map[string]string
		err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			got = ranksAt(gen)
			return len(got) == 4, nil
		})
		if err != nil {
			t.Fatalf("generation %s: ranks %v after 2 minutes", gen, got)
		}
		return got
	}
	first := waitRanks("0")
	for name, r := range first {
		if r != wantRank[name] {
			t.Errorf("generation 0: %s rank %s, want %s (ranks %v)", name, r, wantRank[name], first)
		}
	}
	before, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "muster.dev/group=placed"})
	if err != nil {
		t.Fatal(err)
	}
	// A rival gang wanting the same four whole nodes.
	for i := 0; i < 4; i++ {
		pod := podbuilder.MakePod().Namespace(ns).Name(fmt.Sprintf("rival-%d", i)).Group("rival").Size(4).
			SchedulerName("muster-scheduler").Container("c", "x").Command("sleep", "3600").GPU(8).Obj()
		if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var second map[string]string
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		rivals, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "muster.dev/group=rival"})
		if err != nil {
			return false, nil
		}
		for _, p := range rivals.Items {
			if p.Spec.NodeName != "" {
				return false, fmt.Errorf("rival %s was bound to %s while the group restarted", p.Name, p.Spec.NodeName)
			}
		}
		second = ranksAt("1")
		return len(second) == 4, nil
	})
	if err != nil {
		dumpLogs(t, c, ns, "muster.dev/group=placed")
		t.Fatalf("restart in place: %v (generation 1 ranks %v)", err, second)
	}
	for name, r := range second {
		if r != first[name] {
			t.Errorf("generation 1: %s rank %s, was %s", name, r, first[name])
		}
	}
	after, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "muster.dev/group=placed"})
	if err != nil {
		t.Fatal(err)
	}
	was := map[string]v1.Pod{}
	for _, p := range before.Items {
		was[p.Name] = p
	}
	for _, p := range after.Items {
		b := was[p.Name]
		if p.UID != b.UID || p.Spec.NodeName != b.Spec.NodeName {
			t.Errorf("%s: uid %s on %s after the restart, was %s on %s", p.Name, p.UID, p.Spec.NodeName, b.UID, b.Spec.NodeName)
		}
		if d := p.Annotations["muster.dev/topology-domain"]; d == "" {
			t.Errorf("%s: no muster.dev/topology-domain", p.Name)
		}
	}
	t.Logf("ranks by rack %v; restarted in place (generation 1) on the same pods and nodes, rival gang kept Pending", second)
}

// upstreamPodGroup: pods that name a scheduling.k8s.io PodGroup (gang
// minCount 3) in spec.schedulingGroup and carry no muster label or size are
// a muster group like any other: the webhook sizes them from minCount and
// writes the group down, kube-scheduler's pod-group cycle inside muster's
// scheduler places them, and the agents rank them by completion index.
func upstreamPodGroup(t *testing.T, c *cluster.Cluster) {
	cs := c.Clientset()
	ns := clustertest.Namespace(t, c)
	pg := &schedulingv1beta1.PodGroup{
		ObjectMeta: metav1.ObjectMeta{Name: "gang", Namespace: ns},
		Spec: schedulingv1beta1.PodGroupSpec{SchedulingPolicy: schedulingv1beta1.PodGroupSchedulingPolicy{
			Gang: &schedulingv1beta1.GangSchedulingPolicy{MinCount: 3},
		}},
	}
	if _, err := cs.SchedulingV1beta1().PodGroups(ns).Create(context.Background(), pg, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create PodGroup (scheduling.k8s.io/v1beta1): %v", err)
	}
	start := time.Now()
	for i := 0; i < 3; i++ {
		pod := podbuilder.MakePod().Namespace(ns).Name(fmt.Sprintf("g-%d", i)).
			Label("batch.kubernetes.io/job-completion-index", fmt.Sprint(2-i)).Inject().SchedulingGroup("gang").
			Container("model", "python:3.11-slim").Command("sleep", "3600").Obj()
		if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]string{"g-0": "2", "g-1": "1", "g-2": "0"}
	got := map[string]string{}
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		for p := range want {
			if g, r, w, err := e2etest.RankFromLogs(cs, ns, p); err == nil && g == "0" && w == "3" {
				got[p] = r
			}
		}
		return len(got) == 3, nil
	})
	if err != nil {
		t.Fatalf("upstream PodGroup's pods: ranks %v after 2 minutes", got)
	}
	t.Logf("upstream PodGroup of 3: every rank launched %s after its pods were created", time.Since(start).Round(time.Millisecond))
	for p, r := range want {
		if got[p] != r {
			t.Errorf("%s: rank %s, want %s (its completion index)", p, got[p], r)
		}
	}
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Labels["muster.dev/group"] != "gang" || p.Annotations["muster.dev/size"] != "3" || p.Spec.SchedulerName != "muster-scheduler" {
			t.Errorf("%s: group label %q, size %q, scheduler %q; want gang, 3 (the PodGroup's minCount), muster-scheduler",
				p.Name, p.Labels["muster.dev/group"], p.Annotations["muster.dev/size"], p.Spec.SchedulerName)
		}
	}
}

// dumpLogs logs the tail of each selected pod's log, for a failure.
func dumpLogs(t *testing.T, c *cluster.Cluster, ns, selector string) {
	cs := c.Clientset()
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Logf("list pods: %v", err)
		return
	}
	for _, p := range pods.Items {
		logs, _ := cs.CoreV1().Pods(ns).GetLogs(p.Name, &v1.PodLogOptions{Container: p.Spec.Containers[0].Name}).DoRaw(context.Background())
		t.Logf("%s on %s (%s, %s):\n      %s", p.Name, p.Spec.NodeName, p.Status.Phase, e2etest.Conditions(&p), e2etest.Tail(string(logs), 12))
	}
	if b, err := os.ReadFile(filepath.Join(c.Dir(), "logs", "coordinator.log")); err == nil {
		t.Logf("coordinator log:\n      %s", e2etest.Tail(string(b), 30))
	}
}
