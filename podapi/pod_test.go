package podapi

import (
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func podWith(labels, annotations map[string]string) *v1.Pod {
	return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Labels: labels, Annotations: annotations}}
}

func TestOf(t *testing.T) {
	tests := []struct {
		labels map[string]string
		want   string
		ok     bool
	}{
		{map[string]string{LabelGroup: "g"}, "g", true},
		{map[string]string{LabelPodGroup: "lws-0"}, "lws-0", true},
		{map[string]string{LabelGroup: "mine", LabelPodGroup: "theirs"}, "mine", true},
		{nil, "", false},
	}
	for _, tc := range tests {
		k, ok := Of(podWith(tc.labels, nil))
		if ok != tc.ok || k.Name != tc.want || (ok && k.Namespace != "ns") {
			t.Errorf("Of(%v) = %v, %v; want %q, %v", tc.labels, k, ok, tc.want, tc.ok)
		}
	}
}

func TestSize(t *testing.T) {
	tests := []struct {
		ann     map[string]string
		size    int
		present bool
		err     string
	}{
		{map[string]string{AnnotationSize: "8"}, 8, true, ""},
		{map[string]string{AnnotationSize: " 3 "}, 3, true, ""},
		{nil, 0, false, ""},
		{map[string]string{AnnotationSize: "eight"}, 0, true, `muster.dev/size="eight" is not a positive whole number`},
		{map[string]string{AnnotationSize: "0"}, 0, true, "set it to the number of pods"},
		{map[string]string{AnnotationSize: "-2"}, 0, true, "not a positive whole number"},
	}
	for _, tc := range tests {
		n, present, err := Size(podWith(nil, tc.ann))
		if n != tc.size || present != tc.present || (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("Size(%v) = %d, %v, %v; want %d, %v, error containing %q", tc.ann, n, present, err, tc.size, tc.present, tc.err)
		}
	}
}

func TestTimeoutAndOrdinal(t *testing.T) {
	if d, err := Timeout(podWith(nil, map[string]string{AnnotationTimeout: "90s"}), time.Minute); err != nil || d != 90*time.Second {
		t.Errorf("Timeout 90s = %v, %v", d, err)
	}
	if d, err := Timeout(podWith(nil, map[string]string{AnnotationTimeout: "soon"}), time.Minute); err == nil || d != time.Minute || !strings.Contains(err.Error(), AnnotationTimeout) {
		t.Errorf("Timeout soon = %v, %v; want the default and an error naming the annotation", d, err)
	}
	if o := Ordinal(podWith(map[string]string{"apps.kubernetes.io/pod-index": "12"}, nil)); o != 12 {
		t.Errorf("Ordinal = %d, want 12", o)
	}
	if o := Ordinal(podWith(nil, map[string]string{"batch.kubernetes.io/job-completion-index": "3"})); o != 3 {
		t.Errorf("Ordinal from job annotation = %d, want 3", o)
	}
	// A LeaderWorkerSet leader is a StatefulSet pod too: pod-index is its
	// group's index, worker-index its place in the group.
	lwsLeader := podWith(map[string]string{"apps.kubernetes.io/pod-index": "2", "leaderworkerset.sigs.k8s.io/worker-index": "0"}, nil)
	if o := Ordinal(lwsLeader); o != 0 {
		t.Errorf("Ordinal of an LWS leader of group 2 = %d, want its worker index 0", o)
	}
	if o := Ordinal(podWith(nil, nil)); o != -1 {
		t.Errorf("Ordinal of plain pod = %d, want -1", o)
	}
}

// kservePod is a pod of a multi-node InferenceService "llm" at generation
// 3 as KServe v0.17 makes it in Standard mode: the head from Deployment
// llm-predictor, a worker from llm-predictor-worker.
func kservePod(head bool, inject string, env ...v1.EnvVar) *v1.Pod {
	app, container := "isvc.llm-predictor-worker", "worker-container"
	if head {
		app, container = "isvc.llm-predictor", "kserve-container"
	}
	p := podWith(map[string]string{
		LabelKServeInferenceService: "llm", LabelKServeGeneration: "3",
		LabelKServeComponent: "predictor", LabelKServeApp: app,
	}, map[string]string{AnnotationInject: inject})
	p.Spec.Containers = []v1.Container{{Name: container, Env: env}}
	return p
}

func TestKServe(t *testing.T) {
	count := v1.EnvVar{Name: EnvKServeNodeCount, Value: "4"}
	for _, head := range []bool{true, false} {
		p := kservePod(head, "true", v1.EnvVar{Name: "TENSOR_PARALLEL_SIZE", Value: "4"}, count)
		if name, src := Name(p); name != "llm-3" || src != SourceKServe {
			t.Errorf("head %v: Name = %q, %v; want llm-3 (InferenceService and generation), SourceKServe", head, name, src)
		}
		if n, present, err := Size(p); n != 4 || !present || err != nil {
			t.Errorf("head %v: Size = %d, %v, %v; want RAY_NODE_COUNT 4", head, n, present, err)
		}
		want := -1
		if head {
			want = 0 // the head is rank 0: it serves, the workers follow in arrival order
		}
		if o := Ordinal(p); o != want {
			t.Errorf("head %v: Ordinal = %d, want %d", head, o, want)
		}
	}
	// KServe's labels alone make no group: only a pod that asks for muster.
	if name, src := Name(kservePod(true, "false", count)); name != "" || src != SourceNone {
		t.Errorf("a KServe pod without muster.dev/inject: Name = %q, %v; want none", name, src)
	}
	// A hint or an explicit size wins over what KServe says.
	p := kservePod(false, "true", count)
	p.Annotations[AnnotationOrdinal] = "2"
	p.Annotations[AnnotationSize] = "8"
	if o := Ordinal(p); o != 2 {
		t.Errorf("Ordinal with %s: 2 = %d", AnnotationOrdinal, o)
	}
	if n, _, _ := Size(p); n != 8 {
		t.Errorf("Size with %s: 8 = %d", AnnotationSize, n)
	}
	if _, present, err := Size(kservePod(false, "true", v1.EnvVar{Name: EnvKServeNodeCount, Value: "x"})); !present || err == nil || !strings.Contains(err.Error(), AnnotationSize) {
		t.Errorf("Size with RAY_NODE_COUNT=x: present %v, err %v; want an error naming the fix", present, err)
	}
	if _, present, err := Size(kservePod(false, "true")); present || err != nil {
		t.Errorf("Size without RAY_NODE_COUNT: present %v, err %v; want absent", present, err)
	}
	if o := Ordinal(podWith(nil, map[string]string{AnnotationOrdinal: "-1"})); o != -1 {
		t.Errorf("a negative %s is no hint: Ordinal = %d", AnnotationOrdinal, o)
	}
}
