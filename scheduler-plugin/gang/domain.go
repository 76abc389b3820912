package gang

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/muster-dev/muster/podapi"
)

var _ fwk.PreBindPlugin = &Gang{}

// wantsDomain: ranks follow placement (muster.dev/rank-order: topology) and
// the group names the node label that says where a member is.
func wantsDomain(pod *v1.Pod) bool {
	return strings.TrimSpace(pod.Annotations[podapi.AnnotationRankOrder]) == podapi.RankOrderTopology && podapi.RankTopologyKey(pod) != ""
}

// PreBindPreFlight takes the pods whose group ranks by topology, of either
// kind (muster's or an upstream PodGroup's).
func (g *Gang) PreBindPreFlight(ctx context.Context, state fwk.CycleState, pod *v1.Pod, nodeName string) (*fwk.PreBindPreFlightResult, *fwk.Status) {
	if !wantsDomain(pod) {
		return nil, fwk.NewStatus(fwk.Skip)
	}
	return &fwk.PreBindPreFlightResult{AllowParallel: true}, nil
}

// PreBind writes the member's topology domain (the value of the group's
// topology key on the chosen node) into muster.dev/topology-domain before
// the pod is bound, so the kubelet resolves the agent's
// MUSTER_TOPOLOGY_DOMAIN from it and the coordinator can give members of
// one domain neighbouring ranks.
//
// Any other pod is left alone here too, not only in PreBindPreFlight: with
// the NominatedNodeNameForExpectation gate off (or a scheduler that does not
// ask PreBindPreFlight first) PreBind runs for every pod, and the annotation
// would cost every member of every group one more API write before its bind.
func (g *Gang) PreBind(ctx context.Context, state fwk.CycleState, pod *v1.Pod, nodeName string) *fwk.Status {
	if !wantsDomain(pod) {
		return nil
	}
	key := podapi.RankTopologyKey(pod)
	ni, err := g.handle.SnapshotSharedLister().NodeInfos().Get(nodeName)
	if err != nil {
		return fwk.AsStatus(fmt.Errorf("group member %s: node %s: %w", pod.Name, nodeName, err))
	}
	domain := ni.Node().Labels[key]
	if domain == "" {
		// A node without the label is a domain of its own.
		domain = "node/" + nodeName
	}
	if pod.Annotations[podapi.AnnotationTopologyDomain] == domain {
		return nil
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{podapi.AnnotationTopologyDomain: domain}}})
	if _, err := g.handle.ClientSet().CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fwk.AsStatus(fmt.Errorf("group member %s: write %s=%s: %w", pod.Name, podapi.AnnotationTopologyDomain, domain, err))
	}
	return nil
}
