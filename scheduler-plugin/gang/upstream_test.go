package gang_test

// Kubernetes 1.37's own gang scheduling (GenericWorkload) inside muster's
// scheduler: pods naming a scheduling.k8s.io PodGroup are placed by the
// scheduler's pod-group cycle, muster's groups by MusterGang, never a pod by
// both; topology keys of either kind work on either kind of group; ranks
// that follow placement get each member's domain written before binding.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	schedulingv1beta1 "k8s.io/api/scheduling/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

const rackKey = "topology.muster.dev/rack"

func createUpstreamPodGroup(t *testing.T, cs kubernetes.Interface, ns, name string, minCount int, topologyKey string) {
	t.Helper()
	pg := &schedulingv1beta1.PodGroup{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: schedulingv1beta1.PodGroupSpec{SchedulingPolicy: schedulingv1beta1.PodGroupSchedulingPolicy{
			Gang: &schedulingv1beta1.GangSchedulingPolicy{MinCount: int32(minCount)},
		}},
	}
	if topologyKey != "" {
		pg.Spec.SchedulingConstraints = &schedulingv1beta1.PodGroupSchedulingConstraints{
			Topology: []schedulingv1beta1.TopologyConstraint{{Key: topologyKey}},
		}
	}
	if _, err := cs.SchedulingV1beta1().PodGroups(ns).Create(context.Background(), pg, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create PodGroup %s (scheduling.k8s.io/v1beta1): %v", name, err)
	}
}

// Two groups of each kind, each needing 4 whole-ish nodes (4 x 6 GPUs of
// 4 x 8): only one group fits at a time, so they must take turns. At no
// 50 ms sample may a group be partly bound for over a second or more GPUs
// be bound than exist, and MusterGang must never have touched a pod of an
// upstream group (no event of its from such a pod).
func TestUpstreamAndMusterGroupsTakeTurnsWithoutPartialHolds(t *testing.T) {
	cs := client(t)
	ns := newNamespace(t, cs)
	const members, gpus = 4, 6
	names := []string{"m0", "u0", "m1", "u1"}
	for _, n := range names {
		createGroup(t, cs, ns, groupSpec{name: n, members: members, gpus: gpus, upstream: strings.HasPrefix(n, "u")})
	}
	r := runTurns(t, cs, ns, names, members, gpus, time.Second)
	if r.maxGPUs > 32 {
		t.Fatalf("%d GPUs bound at once on nodes that have 32: a double reservation", r.maxGPUs)
	}
	evs, err := cs.EventsV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if strings.HasPrefix(e.Regarding.Name, "u") && (e.Reason == "GroupWaiting" || e.Reason == "InvalidGroup") {
			t.Errorf("MusterGang acted on upstream group pod %s: %s %s", e.Regarding.Name, e.Reason, e.Note)
		}
	}
	t.Logf("2 muster and 2 upstream groups took turns on room for one; each ran after %v; at most %d GPUs bound", r.ran, r.maxGPUs)
}

// muster.dev/topology-key keeps an upstream group in one rack (the PodGroup
// names no topology), and an upstream PodGroup's topology key keeps its
// group in one rack too. Left alone, kube-scheduler spreads 4 x 4 GPUs over
// all four nodes (least allocated first).
func TestTopologyKeysWorkOnUpstreamGroups(t *testing.T) {
	cs := client(t)
	for _, tc := range []struct {
		name string
		spec groupSpec
	}{
		{"muster annotation", groupSpec{name: "ua", members: 4, gpus: 4, upstream: true, topologyKey: rackKey}},
		{"PodGroup constraint", groupSpec{name: "ub", members: 4, gpus: 4, upstream: true, pgTopology: rackKey}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNamespace(t, cs)
			createGroup(t, cs, ns, tc.spec)
			nodes := waitBound(t, cs, ns, tc.spec.name, 4, time.Minute)
			racks := map[string]bool{}
			for _, n := range nodes {
				racks[rackOf(n)] = true
			}
			if len(racks) != 1 {
				t.Fatalf("upstream group spread over racks %v: %v", racks, nodes)
			}
		})
	}
}

// muster.dev/rank-order: topology: before binding each member, the
// scheduler writes its node's rack into muster.dev/topology-domain (where
// the agent reads it), for muster's groups and upstream ones alike (4
// members x 8 GPUs: one per node, two racks).
func TestRankOrderTopologyWritesEachMembersDomain(t *testing.T) {
	cs := client(t)
	for _, upstream := range []bool{false, true} {
		t.Run(fmt.Sprintf("upstream=%v", upstream), func(t *testing.T) {
			ns := newNamespace(t, cs)
			name := "rk"
			createGroup(t, cs, ns, groupSpec{name: name, members: 4, gpus: 8, upstream: upstream, annotations: map[string]string{
				"muster.dev/rank-order": "topology", "muster.dev/rank-topology-key": rackKey,
			}})
			nodes := waitBound(t, cs, ns, name, 4, time.Minute)
			err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
				pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
				if err != nil {
					return false, nil
				}
				for _, p := range pods.Items {
					if got, want := p.Annotations["muster.dev/topology-domain"], rackOf(nodes[p.Name]); got != want {
						return false, nil
					}
				}
				return true, nil
			})
			if err != nil {
				pods, _ := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
				for _, p := range pods.Items {
					t.Logf("%s on %s: domain %q", p.Name, p.Spec.NodeName, p.Annotations["muster.dev/topology-domain"])
				}
				t.Fatalf("members' muster.dev/topology-domain never matched their nodes' racks")
			}
		})
	}
	// Without the annotation nothing is written.
	ns := newNamespace(t, cs)
	createGroup(t, cs, ns, groupSpec{name: "plain", members: 2, gpus: 1})
	waitBound(t, cs, ns, "plain", 2, time.Minute)
	pods, _ := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	for _, p := range pods.Items {
		if d, ok := p.Annotations["muster.dev/topology-domain"]; ok {
			t.Errorf("%s: topology domain %q written without rank-order topology", p.Name, d)
		}
	}
}
