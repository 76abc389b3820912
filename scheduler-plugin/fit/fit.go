// Package fit decides whether every not-yet-placed member of a group can be
// placed at once, and where. It is the whole-group check that runs before
// any member reserves anything: a group that cannot fit holds nothing.
//
// The model is the one that matters for gangs of accelerator pods: resource
// requests against what nodes have left (CPU, memory, pods, extended
// resources such as nvidia.com/gpu), node taints, unschedulable nodes,
// nodeSelector and required node affinity, and one topology domain for the
// whole group. Other filters (ports, pod affinity, volumes) still run in the
// scheduler for each member; a member they reject releases the whole group.
package fit

import (
	"sort"

	v1 "k8s.io/api/core/v1"
	resourcehelper "k8s.io/component-helpers/resource"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"
)

// Resources are amounts per resource: CPU in millicores, memory and
// storage in bytes, pods as a count, extended resources as integers.
type Resources map[v1.ResourceName]int64

// Requests is what pod asks for, including one pod slot.
func Requests(pod *v1.Pod) Resources {
	r := Resources{v1.ResourcePods: 1}
	for name, q := range resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{}) {
		if name == v1.ResourceCPU {
			r[name] = q.MilliValue()
		} else {
			r[name] = q.Value()
		}
	}
	return r
}

// Member is a pod to place.
type Member struct {
	Pod      *v1.Pod
	Requests Resources
}

// Node is a node and what it has left.
type Node struct {
	Node *v1.Node
	Free Resources
}

// Result is the outcome of Plan.
type Result struct {
	// OK is true when every member has a node.
	OK bool
	// Placement maps pod name to node name.
	Placement map[string]string
	// Domain is the topology domain chosen ("" without a topology key).
	Domain string
	// Fit is how many members fit in the best attempt (all of them if OK).
	Fit int
}

// Plan places members on nodes. With a topologyKey every member goes to
// nodes sharing one value of that label (fixedDomain, when the group
// already has members placed there); among domains where the group fits it
// picks the tightest (least of the group's dominant resource left over),
// so that large holes stay free for large groups.
func Plan(members []Member, nodes []Node, topologyKey, fixedDomain string) Result {
	domains := map[string][]Node{}
	for _, n := range nodes {
		d := ""
		if topologyKey != "" {
			v, ok := n.Node.Labels[topologyKey]
			if !ok {
				continue
			}
			d = v
		}
		if fixedDomain != "" && d != fixedDomain {
			continue
		}
		domains[d] = append(domains[d], n)
	}
	names := make([]string, 0, len(domains))
	for d := range domains {
		names = append(names, d)
	}
	sort.Strings(names)

	order := sortedMembers(members)
	dominant := dominantResource(members)
	best := Result{}
	bestLeft := int64(-1)
	for _, d := range names {
		r, left := place(order, domains[d], dominant)
		r.Domain = d
		switch {
		case r.OK && (!best.OK || left < bestLeft):
			best, bestLeft = r, left
		case !best.OK && r.Fit > best.Fit:
			best = r
		}
	}
	if len(members) == 0 {
		best.OK = true
	}
	return best
}

// place puts members, largest first, each on the eligible node where it
// leaves the least of the dominant resource (best fit).
func place(members []Member, nodes []Node, dominant v1.ResourceName) (Result, int64) {
	free := make([]Resources, len(nodes))
	for i, n := range nodes {
		free[i] = copyResources(n.Free)
	}
	r := Result{Placement: map[string]string{}}
	for _, m := range members {
		bestNode, bestLeft := -1, int64(0)
		for i, n := range nodes {
			if !Eligible(m.Pod, n.Node) || !fits(m.Requests, free[i]) {
				continue
			}
			left := free[i][dominant] - m.Requests[dominant]
			if bestNode < 0 || left < bestLeft || (left == bestLeft && n.Node.Name < nodes[bestNode].Node.Name) {
				bestNode, bestLeft = i, left
			}
		}
		if bestNode < 0 {
			continue
		}
		for k, v := range m.Requests {
			free[bestNode][k] -= v
		}
		r.Placement[m.Pod.Name] = nodes[bestNode].Node.Name
		r.Fit++
	}
	r.OK = r.Fit == len(members)
	var left int64
	for _, f := range free {
		left += f[dominant]
	}
	return r, left
}

// Eligible reports whether pod may run on node at all, capacity aside.
func Eligible(pod *v1.Pod, node *v1.Node) bool {
	if node.Spec.Unschedulable {
		return false
	}
	noSchedule := func(t *v1.Taint) bool {
		return t.Effect == v1.TaintEffectNoSchedule || t.Effect == v1.TaintEffectNoExecute
	}
	if _, untolerated := corev1helpers.FindMatchingUntoleratedTaint(klog.Background(), node.Spec.Taints, pod.Spec.Tolerations, noSchedule, true); untolerated {
		return false
	}
	ok, err := nodeaffinity.GetRequiredNodeAffinity(pod).Match(node)
	return err == nil && ok
}

func fits(req, free Resources) bool {
	for k, v := range req {
		if v > 0 && free[k] < v {
			return false
		}
	}
	return true
}

func copyResources(r Resources) Resources {
	c := make(Resources, len(r))
	for k, v := range r {
		c[k] = v
	}
	return c
}

// dominantResource is what the group asks most of, relative to nothing
// but itself: an extended resource (an accelerator) when any member asks
// for one, else CPU.
func dominantResource(members []Member) v1.ResourceName {
	totals := map[v1.ResourceName]int64{}
	for _, m := range members {
		for k, v := range m.Requests {
			switch k {
			case v1.ResourceCPU, v1.ResourceMemory, v1.ResourcePods, v1.ResourceEphemeralStorage:
			default:
				totals[k] += v
			}
		}
	}
	var best v1.ResourceName
	for k, v := range totals {
		if v > 0 && (best == "" || v > totals[best] || (v == totals[best] && k < best)) {
			best = k
		}
	}
	if best == "" {
		return v1.ResourceCPU
	}
	return best
}

// sortedMembers orders members largest first (by dominant resource, then
// CPU, then memory), ties by name, so that plans are deterministic.
func sortedMembers(members []Member) []Member {
	dom := dominantResource(members)
	out := append([]Member(nil), members...)
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i].Requests, out[j].Requests
		for _, k := range []v1.ResourceName{dom, v1.ResourceCPU, v1.ResourceMemory} {
			if a[k] != b[k] {
				return a[k] > b[k]
			}
		}
		return out[i].Pod.Name < out[j].Pod.Name
	})
	return out
}
