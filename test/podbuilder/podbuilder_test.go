package podbuilder

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestMakePod spells out the pod each method writes.
func TestMakePod(t *testing.T) {
	created := time.Unix(1000, 0)
	got := MakePod().Namespace("ns").Name("llama-1").CreationTimestamp(created).
		Group("llama").PodGroup("pg").PodIndex(1).Label("app", "web").
		Size(2).Inject().Runtime("torchrun").Port(8000).TopologyKey("rack").Annotation("note", "x").
		Container("model", "example.com/model").Command("python3", "serve.py").Args("--port", "8000").GPU(8).Request(v1.ResourceCPU, "1").
		Container("side", "example.com/side").
		SchedulerName("muster-scheduler").SchedulingGroup("gang").Node("node-0").NodeSelector(map[string]string{"rack": "a"}).
		Toleration("kwok.x-k8s.io/node").Priority(7).ServiceAccount("sa").TerminationGracePeriod(5).
		Obj()

	eight := resource.MustParse("8")
	gang := "gang"
	priority, grace := int32(7), int64(5)
	want := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "ns", Name: "llama-1", CreationTimestamp: metav1.NewTime(created),
			Labels: map[string]string{
				"muster.dev/group": "llama", "scheduling.x-k8s.io/pod-group": "pg", "apps.kubernetes.io/pod-index": "1", "app": "web",
			},
			Annotations: map[string]string{
				"muster.dev/size": "2", "muster.dev/inject": "true", "muster.dev/runtime": "torchrun", "muster.dev/port": "8000",
				"muster.dev/topology-key": "rack", "note": "x",
			},
		},
		Spec: v1.PodSpec{
			Containers: []v1.Container{
				{
					Name: "model", Image: "example.com/model", Command: []string{"python3", "serve.py"}, Args: []string{"--port", "8000"},
					Resources: v1.ResourceRequirements{
						Requests: v1.ResourceList{"nvidia.com/gpu": eight, v1.ResourceCPU: resource.MustParse("1")},
						Limits:   v1.ResourceList{"nvidia.com/gpu": eight},
					},
				},
				{Name: "side", Image: "example.com/side"},
			},
			SchedulerName:                 "muster-scheduler",
			SchedulingGroup:               &v1.PodSchedulingGroup{PodGroupName: &gang},
			NodeName:                      "node-0",
			NodeSelector:                  map[string]string{"rack": "a"},
			Tolerations:                   []v1.Toleration{{Key: "kwok.x-k8s.io/node", Operator: v1.TolerationOpExists, Effect: v1.TaintEffectNoSchedule}},
			Priority:                      &priority,
			ServiceAccountName:            "sa",
			TerminationGracePeriodSeconds: &grace,
		},
	}
	if !equality.Semantic.DeepEqual(got, want) {
		t.Errorf("built pod\n%+v\nwant\n%+v", got, want)
	}
}

func TestMakePodLeavesUnsetFieldsEmpty(t *testing.T) {
	p := MakePod().Name("p").Obj()
	if p.Labels != nil || p.Annotations != nil || len(p.Spec.Containers) != 0 {
		t.Errorf("MakePod().Name(p) = %+v: want no labels, annotations or containers", p)
	}
}

func TestContainerMethodsNeedAContainer(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Command before Container did not panic")
		}
	}()
	MakePod().Command("serve")
}
