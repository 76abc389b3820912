package gang

import (
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/scheduler-plugin/fit"
)

// planCache keeps each group's last whole-group plan so that its members'
// PreFilters, which come one after another (QueueSort keeps them
// adjacent), reuse the plan the first of them made instead of planning the
// whole group again over every node for each member (issue #15: under
// the gang benchmark PreFilter, nearly all of it fit.Plan and the node
// copies it needs, was 77-79% of the scheduling algorithm's time).
//
// A plan is reused only while it is exactly as valid as when it was made:
// the same members (same resourceVersions) still to place or placed since
// on the nodes the plan gave them, and every node of the snapshot either
// unchanged (same generation) or changed only by those placements (same
// Node object, and what it has left equals what it had minus what the
// group's members placed there since take). Anything else (another pod
// landing or leaving, a node added, removed, relabelled or tainted, a
// member updated) makes the group plan afresh, as before. A rejected
// group (rejectWaiting) and a fully bound one drop their plan.
type planCache struct {
	mu    sync.Mutex
	plans map[podapi.Key]*cachedPlan
}

type cachedPlan struct {
	size        int
	topologyKey string
	domain      string
	result      fit.Result
	// members are the group's members unplaced when the plan was made.
	members map[types.UID]plannedMember
	// nodes is the snapshot the plan was made on, by node name.
	nodes map[string]plannedNode
}

type plannedMember struct {
	name            string
	resourceVersion string
	requests        fit.Resources
}

type plannedNode struct {
	generation int64
	node       *v1.Node
	free       fit.Resources
}

// maxCachedPlans bounds the cache; groups that vanish without being bound
// or rejected leave entries behind until then.
const maxCachedPlans = 10000

// plan returns a plan for the group's unplaced members: the cached one
// when it is still valid (reused true), else compute()'s, which is cached
// when it places everyone. placedOn maps the name of each placed member
// (bound, or reserved and waiting at Permit) to its node.
func (c *planCache) plan(key podapi.Key, m groupMembers, domain string, unplaced []*v1.Pod, placedOn map[string]string,
	nodes []fwk.NodeInfo, compute func() fit.Result) (r fit.Result, reused bool) {
	c.mu.Lock()
	cp := c.plans[key]
	c.mu.Unlock()
	if cp != nil && cp.validFor(m, domain, unplaced, placedOn, nodes) {
		return cp.result, true
	}
	r = compute()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !r.OK {
		delete(c.plans, key)
		return r, false
	}
	if c.plans == nil || len(c.plans) >= maxCachedPlans {
		c.plans = map[podapi.Key]*cachedPlan{}
	}
	cp = &cachedPlan{size: m.size, topologyKey: m.topologyKey, domain: domain, result: r,
		members: make(map[types.UID]plannedMember, len(unplaced)), nodes: make(map[string]plannedNode, len(nodes))}
	for _, p := range unplaced {
		cp.members[p.UID] = plannedMember{name: p.Name, resourceVersion: p.ResourceVersion, requests: fit.Requests(p)}
	}
	for _, ni := range nodes {
		if n := ni.Node(); n != nil {
			cp.nodes[n.Name] = plannedNode{generation: ni.GetGeneration(), node: n, free: freeOf(ni)}
		}
	}
	c.plans[key] = cp
	return r, false
}

// drop forgets the group's plan.
func (c *planCache) drop(key podapi.Key) {
	c.mu.Lock()
	delete(c.plans, key)
	c.mu.Unlock()
}

func (cp *cachedPlan) validFor(m groupMembers, domain string, unplaced []*v1.Pod, placedOn map[string]string, nodes []fwk.NodeInfo) bool {
	if cp.size != m.size || cp.topologyKey != m.topologyKey || len(nodes) != len(cp.nodes) {
		return false
	}
	if domain != "" && domain != cp.result.Domain {
		return false
	}
	// Every member still to place was in the plan, unchanged.
	for _, p := range unplaced {
		pm, ok := cp.members[p.UID]
		if !ok || pm.resourceVersion != p.ResourceVersion || cp.result.Placement[p.Name] == "" {
			return false
		}
	}
	// Members placed since went where the plan put them; what they take
	// there is the only change the nodes may show.
	took := map[string]fit.Resources{}
	for _, p := range m.active {
		pm, ok := cp.members[p.UID]
		node, placed := placedOn[p.Name]
		if !ok || !placed {
			continue
		}
		if node != cp.result.Placement[pm.name] {
			return false
		}
		t := took[node]
		if t == nil {
			t = fit.Resources{}
			took[node] = t
		}
		for k, v := range pm.requests {
			t[k] += v
		}
	}
	for _, ni := range nodes {
		n := ni.Node()
		if n == nil {
			return false
		}
		pn, ok := cp.nodes[n.Name]
		if !ok {
			return false
		}
		t := took[n.Name]
		if t == nil && ni.GetGeneration() == pn.generation {
			continue
		}
		if n != pn.node {
			return false
		}
		free := freeOf(ni)
		for k, v := range pn.free {
			if free[k] != v-t[k] {
				return false
			}
		}
		for k, v := range free {
			if _, ok := pn.free[k]; !ok && v != -t[k] {
				return false
			}
		}
	}
	return true
}
