package gang

import (
	"fmt"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"

	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/scheduler-plugin/fit"
	"github.com/muster-dev/muster/test/podbuilder"
)

const gpu = podapi.ResourceGPU

func gpuNode(name string, gpus int64) *framework.NodeInfo {
	ni := framework.NewNodeInfo()
	ni.SetNode(&v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: v1.NodeStatus{Allocatable: v1.ResourceList{
			v1.ResourceCPU: resource.MustParse("64"), v1.ResourceMemory: resource.MustParse("256Gi"),
			v1.ResourcePods: resource.MustParse("110"), gpu: *resource.NewQuantity(gpus, resource.DecimalSI),
		}},
	})
	return ni
}

// cycle is one member's scheduling cycle the way the scheduler drives the
// plugin: the group's plan (cached or computed), then the member reserved
// on its planned node (the snapshot's node changes, as AssumePod makes it).
type cycle struct {
	t        *testing.T
	cache    planCache
	key      podapi.Key
	m        groupMembers
	nodes    []*framework.NodeInfo
	placedOn map[string]string
	computed int
}

func newCycle(t *testing.T, members, nodes int, gpus int64) *cycle {
	c := &cycle{t: t, key: podapi.Key{Namespace: "ns", Name: "g"}, m: groupMembers{size: members}, placedOn: map[string]string{}}
	for i := range nodes {
		c.nodes = append(c.nodes, gpuNode(fmt.Sprintf("n%d", i), 8))
	}
	for i := range members {
		p := podbuilder.MakePod().Namespace("ns").Name(fmt.Sprintf("g-%d", i)).Group("g").Size(members).Container("c", "img").GPU(gpus).Obj()
		p.UID = types.UID(p.Name)
		p.ResourceVersion = "1"
		c.m.active = append(c.m.active, p)
	}
	return c
}

func (c *cycle) snapshot() []fwk.NodeInfo {
	out := make([]fwk.NodeInfo, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n
	}
	return out
}

// schedule runs member i's cycle and reports whether the plan was reused.
func (c *cycle) schedule(i int) bool {
	c.t.Helper()
	var unplaced []*v1.Pod
	for _, p := range c.m.active {
		if _, ok := c.placedOn[p.Name]; !ok {
			unplaced = append(unplaced, p)
		}
	}
	nodes := c.snapshot()
	r, reused := c.cache.plan(c.key, c.m, "", unplaced, c.placedOn, nodes, func() fit.Result {
		c.computed++
		var members []fit.Member
		for _, p := range unplaced {
			members = append(members, fit.Member{Pod: p, Requests: fit.Requests(p)})
		}
		return fit.Plan(members, snapshotNodes(nodes), "", "")
	})
	pod := c.m.active[i]
	node := r.Placement[pod.Name]
	if !r.OK || node == "" {
		c.t.Fatalf("member %s: no plan (%+v)", pod.Name, r)
	}
	c.reserve(pod, node)
	c.placedOn[pod.Name] = node
	return reused
}

func (c *cycle) reserve(pod *v1.Pod, node string) {
	c.t.Helper()
	for _, ni := range c.nodes {
		if ni.Node().Name == node {
			assumed := pod.DeepCopy()
			assumed.Spec.NodeName = node
			if !fit.Eligible(assumed, ni.Node()) {
				c.t.Fatalf("%s not eligible on %s", pod.Name, node)
			}
			ni.AddPod(assumed)
			if free := freeOf(ni); free[gpu] < 0 {
				c.t.Fatalf("%s overcommits %s: %v GPUs left", pod.Name, node, free[gpu])
			}
			return
		}
	}
	c.t.Fatalf("no node %s", node)
}

func TestGroupIsPlannedOncePerGangCycle(t *testing.T) {
	// 8 x 4 GPUs on 4 nodes of 8: the whole cluster, two members a node.
	c := newCycle(t, 8, 4, 4)
	for i := range 8 {
		reused := c.schedule(i)
		if want := i > 0; reused != want {
			t.Errorf("member %d: plan reused %v, want %v", i, reused, want)
		}
	}
	if c.computed != 1 {
		t.Errorf("plans computed for one gang cycle: %d, want 1", c.computed)
	}
}

func TestGroupPlansAgainWhenTheSnapshotChangesOtherwise(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(c *cycle)
	}{
		{"another pod lands on a node", func(c *cycle) {
			c.nodes[3].AddPod(podbuilder.MakePod().Namespace("other").Name("x").Node("n3").Container("c", "img").GPU(1).Obj())
		}},
		{"a node is relabelled", func(c *cycle) {
			n := c.nodes[2].Node().DeepCopy()
			n.Labels = map[string]string{"rack": "r9"}
			c.nodes[2].SetNode(n)
		}},
		{"a node goes away", func(c *cycle) { c.nodes = c.nodes[:3] }},
		{"a member is updated", func(c *cycle) {
			p := c.m.active[7].DeepCopy()
			p.ResourceVersion = "2"
			c.m.active[7] = p
		}},
		{"the group is rejected", func(c *cycle) { c.cache.drop(c.key) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// 8 x 2 GPUs on 4 nodes of 8: room to spare, so a changed
			// snapshot still fits the group.
			c := newCycle(t, 8, 4, 2)
			c.schedule(0)
			c.schedule(1)
			tc.change(c)
			if c.schedule(2) {
				t.Errorf("plan reused after %s", tc.name)
			}
			if c.computed != 2 {
				t.Errorf("plans computed: %d, want 2", c.computed)
			}
			for i := 3; i < 8; i++ {
				if !c.schedule(i) {
					t.Errorf("member %d: fresh plan not reused", i)
				}
			}
		})
	}
}
