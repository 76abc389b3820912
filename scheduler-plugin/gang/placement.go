package gang

import (
	schedulingv1beta1 "k8s.io/api/scheduling/v1beta1"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/muster-dev/muster/podapi"
)

// withTopologyKey returns pg as the upstream topology plugin should see it:
// unchanged when its PodGroup names a topology key (or none of its pods
// asks for one), else with muster.dev/topology-key of its pods as the
// PodGroup's topology constraint.
func withTopologyKey(pg fwk.PodGroupInfo) fwk.PodGroupInfo {
	obj := pg.GetPodGroup()
	if obj == nil {
		return pg // a composite group: its own constraints only
	}
	if c := obj.Spec.SchedulingConstraints; c != nil && len(c.Topology) > 0 {
		return pg
	}
	key := ""
	for _, p := range pg.GetUnscheduledPods() {
		if key = podapi.TopologyKey(p); key != "" {
			break
		}
	}
	if key == "" {
		return pg
	}
	cp := obj.DeepCopy()
	cp.Spec.SchedulingConstraints = &schedulingv1beta1.PodGroupSchedulingConstraints{
		Topology: []schedulingv1beta1.TopologyConstraint{{Key: key}},
	}
	return topologyPodGroup{PodGroupInfo: pg, pg: cp}
}

type topologyPodGroup struct {
	fwk.PodGroupInfo
	pg *schedulingv1beta1.PodGroup
}

func (t topologyPodGroup) GetPodGroup() *schedulingv1beta1.PodGroup { return t.pg }
