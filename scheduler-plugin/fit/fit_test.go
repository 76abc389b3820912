package fit

import (
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/muster-dev/muster/test/podbuilder"
)

const gpu = v1.ResourceName("nvidia.com/gpu")

// pod is a member asking for gpus GPUs and one CPU.
func pod(name string, gpus int64) *v1.Pod {
	return podbuilder.MakePod().Name(name).Container("c", "").GPU(gpus).Request(v1.ResourceCPU, "1").Obj()
}

func members(gpus ...int64) []Member {
	var out []Member
	for i, g := range gpus {
		p := pod(fmt.Sprintf("m%d", i), g)
		out = append(out, Member{Pod: p, Requests: Requests(p)})
	}
	return out
}

func node(name, rack string, freeGPU int64) Node {
	return Node{
		Node: &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"rack": rack}}},
		Free: Resources{gpu: freeGPU, v1.ResourceCPU: 64000, v1.ResourceMemory: 1 << 40, v1.ResourcePods: 110},
	}
}

func TestPlan(t *testing.T) {
	fourNodes := []Node{node("n0", "a", 8), node("n1", "a", 8), node("n2", "b", 8), node("n3", "b", 8)}
	tests := []struct {
		name     string
		members  []Member
		nodes    []Node
		key      string
		fixed    string
		wantOK   bool
		wantFit  int
		wantDom  string
		wantNode map[string]string
	}{
		{
			name: "fragmentation: largest first packs 8,4,4 onto two nodes",
			// In member order a spreading scheduler would put 4 and 4 on
			// different nodes and strand the 8.
			members: members(4, 4, 8), nodes: []Node{node("n0", "a", 8), node("n1", "a", 8)},
			wantOK: true, wantFit: 3,
		},
		{
			name:    "too big: 3 of 4 fit, nothing placed for real",
			members: members(8, 8, 8, 8), nodes: fourNodes[:3],
			wantOK: false, wantFit: 3,
		},
		{
			name:    "topology: the whole group in one rack",
			members: members(8, 8), nodes: fourNodes, key: "rack",
			wantOK: true, wantFit: 2, wantDom: "a",
		},
		{
			name:    "topology: no rack holds three 8-GPU members",
			members: members(8, 8, 8), nodes: fourNodes, key: "rack",
			wantOK: false, wantFit: 2,
		},
		{
			name:    "topology: tightest rack wins",
			members: members(4, 4), nodes: []Node{node("n0", "a", 8), node("n1", "a", 8), node("n2", "b", 8)}, key: "rack",
			wantOK: true, wantDom: "b", wantFit: 2, wantNode: map[string]string{"m0": "n2", "m1": "n2"},
		},
		{
			name:    "fixed domain from members already placed",
			members: members(8), nodes: fourNodes, key: "rack", fixed: "b",
			wantOK: true, wantFit: 1, wantDom: "b",
		},
		{
			name:    "nodes without the topology label are not candidates",
			members: members(1), nodes: []Node{{Node: &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, Free: Resources{gpu: 8, v1.ResourceCPU: 8000, v1.ResourcePods: 10}}}, key: "rack",
			wantOK: false, wantFit: 0,
		},
		{
			name:    "empty group fits",
			members: nil, nodes: fourNodes,
			wantOK: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Plan(tc.members, tc.nodes, tc.key, tc.fixed)
			if r.OK != tc.wantOK || r.Fit != tc.wantFit {
				t.Fatalf("Plan: ok=%v fit=%d (%v), want ok=%v fit=%d", r.OK, r.Fit, r.Placement, tc.wantOK, tc.wantFit)
			}
			if tc.wantDom != "" && r.Domain != tc.wantDom {
				t.Fatalf("domain %q, want %q", r.Domain, tc.wantDom)
			}
			for p, n := range tc.wantNode {
				if r.Placement[p] != n {
					t.Fatalf("%s on %q, want %q (placement %v)", p, r.Placement[p], n, r.Placement)
				}
			}
			if r.OK {
				// A valid plan never overcommits a node.
				used := map[string]int64{}
				for _, m := range tc.members {
					used[r.Placement[m.Pod.Name]] += m.Requests[gpu]
				}
				for _, n := range tc.nodes {
					if used[n.Node.Name] > n.Free[gpu] {
						t.Fatalf("node %s overcommitted: %d > %d", n.Node.Name, used[n.Node.Name], n.Free[gpu])
					}
				}
			}
		})
	}
}

func TestEligible(t *testing.T) {
	tainted := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "t"}, Spec: v1.NodeSpec{Taints: []v1.Taint{{Key: "gpu", Effect: v1.TaintEffectNoSchedule}}}}
	cordoned := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "c"}, Spec: v1.NodeSpec{Unschedulable: true}}
	labelled := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "l", Labels: map[string]string{"pool": "h100"}}}
	plain := pod("p", 1)
	tolerant := pod("t", 1)
	tolerant.Spec.Tolerations = []v1.Toleration{{Key: "gpu", Operator: v1.TolerationOpExists}}
	picky := pod("s", 1)
	picky.Spec.NodeSelector = map[string]string{"pool": "h100"}
	tests := []struct {
		pod  *v1.Pod
		node *v1.Node
		want bool
	}{
		{plain, tainted, false}, {tolerant, tainted, true}, {plain, cordoned, false},
		{picky, labelled, true}, {picky, tainted, false}, {plain, labelled, true},
	}
	for _, tc := range tests {
		if got := Eligible(tc.pod, tc.node); got != tc.want {
			t.Errorf("Eligible(%s, %s) = %v, want %v", tc.pod.Name, tc.node.Name, got, tc.want)
		}
	}
}
