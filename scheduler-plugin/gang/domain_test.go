package gang

import (
	"context"
	"testing"

	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/test/podbuilder"
)

// TestPreBindLeavesPodsWithoutTopologyRanksAlone: PreBind runs for every
// pod when the scheduler does not consult PreBindPreFlight first (the
// NominatedNodeNameForExpectation gate off). A pod whose ranks do not follow
// topology must get no API call: the Gang here has no framework handle, so
// any lookup or write would panic.
func TestPreBindLeavesPodsWithoutTopologyRanksAlone(t *testing.T) {
	g := &Gang{}
	pods := map[string]*podbuilder.PodWrapper{
		"group member":                podbuilder.MakePod().Namespace("ns").Name("a-0").Group("a"),
		"topology key, ordinal ranks": podbuilder.MakePod().Namespace("ns").Name("b-0").Group("b").TopologyKey("topology.muster.dev/rack"),
		"not in a group":              podbuilder.MakePod().Namespace("ns").Name("solo"),
	}
	for name, b := range pods {
		t.Run(name, func(t *testing.T) {
			pod := b.Obj()
			if pod.Annotations[podapi.AnnotationRankOrder] == podapi.RankOrderTopology {
				t.Fatalf("test pod asks for topology ranks")
			}
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("PreBind reached for the API on a pod without topology ranks: %v", r)
				}
			}()
			if st := g.PreBind(context.Background(), nil, pod, "node-1"); !st.IsSuccess() {
				t.Fatalf("PreBind = %v, want success", st)
			}
		})
	}
}
