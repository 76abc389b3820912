package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/test/podbuilder"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json from the webhook's output")

// testCA is a self-signed CA certificate (openssl req -x509, P-256, valid
// for 100 years), the coordinator's CA in testConfig.
var testCA = func() []byte {
	b, err := os.ReadFile(filepath.Join("testdata", "coordinator-ca.pem"))
	if err != nil {
		panic(err)
	}
	return b
}()

// testConfig sizes one PodGroup, serving/vllm-0, as scheduler-plugins
// would, and has a coordinator CA.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.CoordinatorCA = testCA
	cfg.SizeLookup = func(_ context.Context, ns, name string) (int, bool, error) {
		if ns == "serving" && name == "vllm-0" {
			return 2, true, nil
		}
		return 0, false, nil
	}
	cfg.GangLookup = func(_ context.Context, ns, name string) (Gang, bool, error) {
		switch name {
		case "train":
			return Gang{MinCount: 3, TopologyKey: "topology.muster.dev/rack"}, true, nil
		case "upstream-pg":
			return Gang{MinCount: 2}, true, nil
		case "no-gang":
			return Gang{}, true, nil
		}
		return Gang{}, false, nil
	}
	return cfg
}

func testHandler(cfg Config) *handler { return &handler{cfg: cfg, log: slog.New(slog.DiscardHandler)} }

// podJSON reads a pod from YAML and encodes it as the apiserver does in a
// review: from the typed object.
func podJSON(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return mustJSON(t, &pod)
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func createRequest(raw []byte) *admissionv1.AdmissionRequest {
	var meta struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	json.Unmarshal(raw, &meta)
	return &admissionv1.AdmissionRequest{
		UID:       "3f1c6a52-7d1e-4c55-9a4a-0d3b1a2b9c01",
		Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: meta.Metadata.Namespace,
		Name:      meta.Metadata.Name,
		Operation: admissionv1.Create,
		Object:    runtime.RawExtension{Raw: raw},
	}
}

// applyPatch applies a response's patch with the library the apiserver
// applies webhook patches with.
func applyPatch(t testing.TB, raw []byte, resp *admissionv1.AdmissionResponse) []byte {
	t.Helper()
	if len(resp.Patch) == 0 {
		return raw
	}
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patchType = %v, want JSONPatch", resp.PatchType)
	}
	p, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatalf("decode patch %s: %v", resp.Patch, err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("apply patch %s: %v", resp.Patch, err)
	}
	return out
}

// TestGolden runs each testdata/NAME.yaml pod through the webhook and
// compares the warnings, the patch and the patched pod with
// testdata/NAME.golden.json (go test -update rewrites them). Each patched
// pod then goes through the webhook again, which must leave it alone.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil || len(inputs) < 5 {
		t.Fatalf("testdata: %d pods (%v), want at least 5", len(inputs), err)
	}
	cfg := testConfig()
	h := testHandler(cfg)
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			raw := podJSON(t, in)
			resp := h.admit(t.Context(), createRequest(raw))
			if !resp.Allowed {
				t.Fatalf("denied: %s", resp.Result.Message)
			}
			patched := applyPatch(t, raw, resp)
			checkInjected(t, cfg, patched)

			got, err := json.MarshalIndent(struct {
				Warnings []string        `json:"warnings,omitempty"`
				Patch    json.RawMessage `json:"patch"`
				Pod      json.RawMessage `json:"pod"` // after the apiserver applied the patch
			}{resp.Warnings, resp.Patch, patched}, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			goldenFile := filepath.Join("testdata", name+".golden.json")
			if *update {
				if err := os.WriteFile(goldenFile, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(goldenFile)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the webhook's output (go test -update rewrites it; check the diff):\n%s", goldenFile, got)
			}

			again := h.admit(t.Context(), createRequest(patched))
			if !again.Allowed || len(again.Patch) > 0 {
				t.Errorf("second pass over the webhook's own output: allowed %v, patch %s; want allowed and no patch", again.Allowed, again.Patch)
			}
		})
	}
}

// checkInjected checks, apart from the golden files, the invariants every
// injected pod has.
func checkInjected(t *testing.T, cfg Config, raw []byte) {
	t.Helper()
	var pod corev1.Pod
	if err := json.Unmarshal(raw, &pod); err != nil {
		t.Fatal(err)
	}
	checkIdentity(t, cfg, &pod)
	if n := len(slices.DeleteFunc(slices.Clone(pod.Spec.InitContainers), func(c corev1.Container) bool { return c.Name != InitContainerName })); n != 1 || pod.Spec.InitContainers[0].Name != InitContainerName {
		t.Errorf("init containers %v: want %s first and once", pod.Spec.InitContainers, InitContainerName)
	}
	var main *corev1.Container
	for i, c := range pod.Spec.Containers {
		if wrapped(c.Command) {
			if main != nil {
				t.Errorf("more than one container wrapped")
			}
			main = &pod.Spec.Containers[i]
		}
	}
	if main == nil {
		t.Fatalf("no container's command starts with %v", agentRun)
	}
	if len(main.Args) != 0 {
		t.Errorf("main container args %q: want none (moved into the command)", main.Args)
	}
	names := map[string]int{}
	for _, e := range main.Env {
		names[e.Name]++
	}
	for _, n := range []string{"MUSTER_COORDINATOR", "MUSTER_NAMESPACE", "MUSTER_GROUP", "MUSTER_SIZE", "MUSTER_MEMBER_ID", "MUSTER_ADDRESS", "MUSTER_NODE_NAME", "MUSTER_RUNTIME", "MUSTER_ENDPOINT_PORT"} {
		if names[n] != 1 {
			t.Errorf("env %s appears %d times, want once", n, names[n])
		}
	}
	if pod.Annotations[podapi.AnnotationInjected] != "true" {
		t.Errorf("annotation %s missing", podapi.AnnotationInjected)
	}
	if !slices.Contains(pod.Spec.ReadinessGates, corev1.PodReadinessGate{ConditionType: podapi.ConditionGroupReady}) {
		t.Errorf("readiness gates %v: want %s", pod.Spec.ReadinessGates, podapi.ConditionGroupReady)
	}
}

// TestUntouched: requests that are not the creation of an annotated pod
// are allowed as they are.
func TestUntouched(t *testing.T) {
	h := testHandler(testConfig())
	plain := podJSON(t, filepath.Join("testdata", "statefulset.yaml"))
	withInject := func(v string) []byte {
		var pod corev1.Pod
		json.Unmarshal(plain, &pod)
		if v == "" {
			delete(pod.Annotations, podapi.AnnotationInject)
		} else {
			pod.Annotations[podapi.AnnotationInject] = v
		}
		return mustJSON(t, &pod)
	}
	tests := map[string]func(*admissionv1.AdmissionRequest){
		"no inject annotation": func(r *admissionv1.AdmissionRequest) { r.Object.Raw = withInject("") },
		"inject false":         func(r *admissionv1.AdmissionRequest) { r.Object.Raw = withInject("false") },
		"no annotations at all": func(r *admissionv1.AdmissionRequest) {
			r.Object.Raw = []byte(`{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"i"}]}}`)
		},
		"update":      func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Update },
		"subresource": func(r *admissionv1.AdmissionRequest) { r.SubResource = "ephemeralcontainers" },
		"not a pod": func(r *admissionv1.AdmissionRequest) {
			r.Kind = metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
			r.Object.Raw = []byte(`{"metadata":{"annotations":{"muster.dev/inject":"true"}}}`)
		},
	}
	for name, change := range tests {
		t.Run(name, func(t *testing.T) {
			req := createRequest(plain)
			change(req)
			resp := h.admit(t.Context(), req)
			if !resp.Allowed || resp.Patch != nil || resp.PatchType != nil || resp.Result != nil || resp.Warnings != nil {
				t.Errorf("response %+v: want allowed, nothing else", resp)
			}
		})
	}
}

// validPod is a pod the webhook accepts; the invalid cases break it.
func validPod() *corev1.Pod {
	return podbuilder.MakePod().Namespace("ns").Name("p-0").Group("g").Size(2).Inject().Container("main", "i").Command("serve").Obj()
}

func TestInvalid(t *testing.T) {
	ann := func(kv ...string) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			for i := 0; i < len(kv); i += 2 {
				p.Annotations[kv[i]] = kv[i+1]
			}
		}
	}
	lookupDown := testConfig()
	lookupDown.SizeLookup = func(context.Context, string, string) (int, bool, error) {
		return 0, false, errors.New("connection refused")
	}
	noLookup := testConfig()
	noLookup.SizeLookup = nil
	noLookup.GangLookup = nil
	podGroup := func(p *corev1.Pod) {
		delete(p.Labels, "muster.dev/group")
		delete(p.Annotations, "muster.dev/size")
		p.Labels["scheduling.x-k8s.io/pod-group"] = "missing"
	}

	tests := []struct {
		name   string
		cfg    *Config // nil: testConfig()
		change func(*corev1.Pod)
		want   []string // every field error, in order
		code   int32    // 0: 422
	}{
		{
			name:   "ordinal hint not a whole number",
			change: ann("muster.dev/ordinal", "first"),
			want:   []string{`metadata.annotations[muster.dev/ordinal]: Invalid value: "first": must be a whole number from 0`},
		},
		{
			name: "KServe pod of a single-node InferenceService",
			change: func(p *corev1.Pod) {
				kserve(p, true)
				delete(p.Labels, "isvc.generation")
			},
			want: []string{`metadata.labels[isvc.generation]: Required value: InferenceService "llm" is not multi-node`, `metadata.annotations[muster.dev/size]: Required value`},
		},
		{
			name: "KServe pod without its node count",
			change: func(p *corev1.Pod) {
				kserve(p, false)
				p.Spec.Containers[0].Env = nil
			},
			want: []string{`metadata.annotations[muster.dev/size]: Required value: KServe's pods say their count in env RAY_NODE_COUNT and this pod's containers do not; set it to the number of pods of InferenceService "llm"`},
		},
		{
			name: "KServe pod with a bad node count",
			change: func(p *corev1.Pod) {
				kserve(p, false)
				p.Spec.Containers[0].Env[0].Value = "many"
			},
			want: []string{`spec.containers: Invalid value: "RAY_NODE_COUNT": container worker-container: env RAY_NODE_COUNT="many" is not a positive whole number; set annotation muster.dev/size`},
		},
		{
			name:   "no group",
			change: func(p *corev1.Pod) { delete(p.Labels, "muster.dev/group") },
			want:   []string{`metadata.labels[muster.dev/group]: Required value: add label muster.dev/group: NAME (the same on every pod of the group)`},
		},
		{
			name: "label and schedulingGroup name different groups",
			change: func(p *corev1.Pod) {
				p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: new("upstream-pg")}
			},
			want: []string{`spec.schedulingGroup.podGroupName: Invalid value: "upstream-pg": the pod's metadata.labels[muster.dev/group] is "g" but spec.schedulingGroup.podGroupName is "upstream-pg": one group has one name`},
		},
		{
			name: "size disagrees with the PodGroup's minCount",
			change: func(p *corev1.Pod) {
				p.Labels["muster.dev/group"] = "upstream-pg"
				p.Annotations["muster.dev/size"] = "5"
				p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: new("upstream-pg")}
			},
			want: []string{`metadata.annotations[muster.dev/size]: Invalid value: "5": PodGroup "upstream-pg" (podgroups.scheduling.k8s.io) has gang minCount 2 but muster.dev/size is 5`},
		},
		{
			name: "upstream PodGroup missing",
			change: func(p *corev1.Pod) {
				delete(p.Labels, "muster.dev/group")
				p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: new("nowhere")}
			},
			want: []string{`spec.schedulingGroup.podGroupName: Not found: "no PodGroup \"nowhere\" (podgroups.scheduling.k8s.io) in namespace`},
		},
		{
			name: "upstream PodGroup without a gang policy",
			change: func(p *corev1.Pod) {
				delete(p.Labels, "muster.dev/group")
				delete(p.Annotations, "muster.dev/size")
				p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: new("no-gang")}
			},
			want: []string{`spec.schedulingGroup.podGroupName: Invalid value: "no-gang": PodGroup "no-gang" has no gang policy`},
		},
		{
			name: "topology key disagrees with the PodGroup's",
			change: func(p *corev1.Pod) {
				delete(p.Labels, "muster.dev/group")
				delete(p.Annotations, "muster.dev/size")
				p.Annotations["muster.dev/topology-key"] = "topology.kubernetes.io/zone"
				p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: new("train")}
			},
			want: []string{`metadata.annotations[muster.dev/topology-key]: Invalid value: "topology.kubernetes.io/zone": PodGroup "train" asks for one "topology.muster.dev/rack" domain`},
		},
		{
			name:   "rank order by topology without a topology key",
			change: ann("muster.dev/rank-order", "topology"),
			want:   []string{`metadata.annotations[muster.dev/rank-topology-key]: Required value: muster.dev/rank-order: topology ranks members by the domain of a node label`},
		},
		{
			name:   "group not a label value",
			change: func(p *corev1.Pod) { p.Labels["muster.dev/group"] = "-g-" },
			want:   []string{`metadata.labels[muster.dev/group]: Invalid value: "-g-": a valid label must be`},
		},
		{
			name: "pod-group label not a label value",
			change: func(p *corev1.Pod) {
				podGroup(p)
				p.Labels["scheduling.x-k8s.io/pod-group"] = strings.Repeat("x", 64)
			},
			want: []string{`metadata.labels[scheduling.x-k8s.io/pod-group]: Invalid value: "xxxx`},
		},
		{
			name: "schedulingGroup name not a label value",
			change: func(p *corev1.Pod) {
				delete(p.Labels, "muster.dev/group")
				name := strings.Repeat("pg.", 30) + "x"
				p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: &name}
			},
			want: []string{`spec.schedulingGroup.podGroupName: Invalid value: "pg.pg.`},
		},
		{
			name:   "size not a number",
			change: ann("muster.dev/size", "two"),
			want:   []string{`metadata.annotations[muster.dev/size]: Invalid value: "two": must be a positive whole number (the number of pods in the group)`},
		},
		{
			name:   "size zero",
			change: ann("muster.dev/size", "0"),
			want:   []string{`metadata.annotations[muster.dev/size]: Invalid value: "0": must be a positive whole number`},
		},
		{
			name:   "size negative",
			change: ann("muster.dev/size", "-3"),
			want:   []string{`metadata.annotations[muster.dev/size]: Invalid value: "-3": must be a positive whole number`},
		},
		{
			name:   "no size with muster's label",
			change: func(p *corev1.Pod) { delete(p.Annotations, "muster.dev/size") },
			want:   []string{`metadata.annotations[muster.dev/size]: Required value: set it to the number of pods in the group (only pods labelled scheduling.x-k8s.io/pod-group or naming a PodGroup in spec.schedulingGroup may take it from their PodGroup)`},
		},
		{
			name: "no size with an upstream schedulingGroup and no PodGroup reader",
			cfg:  &noLookup,
			change: func(p *corev1.Pod) {
				delete(p.Labels, "muster.dev/group")
				delete(p.Annotations, "muster.dev/size")
				name := "pg"
				p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: &name}
			},
			want: []string{`metadata.annotations[muster.dev/size]: Required value: set it to the number of pods in the group (this webhook does not read scheduling.k8s.io PodGroups)`},
		},
		{
			name:   "no size and no PodGroup",
			change: podGroup,
			want:   []string{`metadata.annotations[muster.dev/size]: Required value: no PodGroup "missing" (podgroups.scheduling.x-k8s.io) in namespace "ns" to take the size from; create it before its pods, or set muster.dev/size`},
		},
		{
			name:   "no size and no PodGroup lookup",
			cfg:    &noLookup,
			change: podGroup,
			want:   []string{`metadata.annotations[muster.dev/size]: Required value: set it to the number of pods in the group (this webhook does not read PodGroups)`},
		},
		{
			name:   "PodGroup lookup fails",
			cfg:    &lookupDown,
			change: podGroup,
			want:   []string{`metadata.annotations[muster.dev/size]: Internal error: look up the size of group "missing": connection refused`},
			code:   500,
		},
		{
			name:   "unknown runtime",
			change: ann("muster.dev/runtime", "tensorrt"),
			want:   []string{`metadata.annotations[muster.dev/runtime]: Unsupported value: "tensorrt": supported values: "env", "torchrun", "vllm", "sglang", "deepspeed", "ray"`},
		},
		{
			name:   "port not a number",
			change: ann("muster.dev/port", "http"),
			want:   []string{`metadata.annotations[muster.dev/port]: Invalid value: "http": must be a port number between 1 and 65535`},
		},
		{
			name:   "port out of range",
			change: ann("muster.dev/port", "70000"),
			want:   []string{`metadata.annotations[muster.dev/port]: Invalid value: "70000": must be a port number between 1 and 65535`},
		},
		{
			name:   "endpoint port zero",
			change: ann("muster.dev/endpoint-port", "0"),
			want:   []string{`metadata.annotations[muster.dev/endpoint-port]: Invalid value: "0": must be a port number between 1 and 65535`},
		},
		{
			name:   "endpoint port is the runtime's port",
			change: ann("muster.dev/port", "8080"),
			want:   []string{`metadata.annotations[muster.dev/endpoint-port]: Invalid value: 8080: the agent's endpoint and the runtime (muster.dev/port) cannot share a port; set muster.dev/endpoint-port to another port`},
		},
		{
			name: "endpoint port taken by a container",
			change: func(p *corev1.Pod) {
				p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
			},
			want: []string{`metadata.annotations[muster.dev/endpoint-port]: Invalid value: 8080: spec.containers[0].ports[0] already uses this port; set muster.dev/endpoint-port to a free port`},
		},
		{
			name: "port name muster taken",
			change: func(p *corev1.Pod) {
				p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "muster", ContainerPort: 9000}}
			},
			want: []string{`spec.containers[0].ports[0].name: Invalid value: "muster": the port name muster is reserved for the agent's endpoint (port 8080); rename this port`},
		},
		{
			name: "a volume of the pod's own named muster-token",
			change: func(p *corev1.Pod) {
				p.Spec.Volumes = []corev1.Volume{{Name: "cache"}, {Name: "muster-token", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			},
			want: []string{`spec.volumes[1].name: Invalid value: "muster-token": the volume name muster-token is reserved for the agent's service-account token, which the webhook adds (projected serviceAccountToken, audience "muster", expirationSeconds 600, path token); rename this volume`},
		},
		{
			name: "a token volume with another audience",
			change: func(p *corev1.Pod) {
				p.Spec.Volumes = []corev1.Volume{{Name: "muster-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
					Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: new(int64(600))}}},
				}}}}
			},
			want: []string{`spec.volumes[0].name: Invalid value: "muster-token": the volume name muster-token is reserved`},
		},
		{
			name: "a mount where the token goes",
			change: func(p *corev1.Pod) {
				p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "w", MountPath: "/weights"}, {Name: "w", MountPath: "/var/run/secrets/muster.dev/"}}
			},
			want: []string{`spec.containers[0].volumeMounts[1].mountPath: Invalid value: "/var/run/secrets/muster.dev/": /var/run/secrets/muster.dev is where the agent reads its token (/var/run/secrets/muster.dev/token); mount this volume elsewhere`},
		},
		{
			name: "a mount over the token",
			change: func(p *corev1.Pod) {
				p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "s", MountPath: "/var/run/secrets/muster.dev/token", SubPath: "token"}}
			},
			want: []string{`spec.containers[0].volumeMounts[0].mountPath: Invalid value: "/var/run/secrets/muster.dev/token": /var/run/secrets/muster.dev is where the agent reads its token`},
		},
		{
			name:   "timeout not a duration",
			change: ann("muster.dev/timeout", "soon"),
			want:   []string{`metadata.annotations[muster.dev/timeout]: Invalid value: "soon": must be a positive duration such as 90s or 5m`},
		},
		{
			name:   "timeout zero",
			change: ann("muster.dev/timeout", "0s"),
			want:   []string{`metadata.annotations[muster.dev/timeout]: Invalid value: "0s": must be a positive duration such as 90s or 5m`},
		},
		{
			name:   "timeout negative",
			change: ann("muster.dev/timeout", "-1m"),
			want:   []string{`metadata.annotations[muster.dev/timeout]: Invalid value: "-1m": must be a positive duration`},
		},
		{
			name:   "topology key not a label key",
			change: ann("muster.dev/topology-key", "rack name"),
			want:   []string{`metadata.annotations[muster.dev/topology-key]: Invalid value: "rack name": must be a node label key: name part must consist of alphanumeric characters`},
		},
		{
			name:   "rank order",
			change: ann("muster.dev/rank-order", "random"),
			want:   []string{`metadata.annotations[muster.dev/rank-order]: Unsupported value: "random": supported values: "ordinal", "topology"`},
		},
		{
			name:   "no command",
			change: func(p *corev1.Pod) { p.Spec.Containers[0].Command = nil; p.Spec.Containers[0].Args = []string{"--x"} },
			want:   []string{`spec.containers[0].command: Required value: muster wraps the container's command with its agent; set command (and args) explicitly`},
		},
		{
			name: "chosen container has no command",
			change: func(p *corev1.Pod) {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "model", Image: "i"})
				p.Annotations[podapi.AnnotationContainer] = "model"
			},
			want: []string{`spec.containers[1].command: Required value: muster wraps the container's command`},
		},
		{
			name:   "chosen container missing",
			change: ann(podapi.AnnotationContainer, "model"),
			want:   []string{`metadata.annotations[muster.dev/container]: Invalid value: "model": no container of that name; the pod's containers are main`},
		},
		{
			name: "several at once",
			change: func(p *corev1.Pod) {
				delete(p.Labels, "muster.dev/group")
				ann("muster.dev/size", "two", "muster.dev/runtime", "tgi")(p)
				p.Spec.Containers[0].Command = nil
			},
			want: []string{
				`metadata.labels[muster.dev/group]: Required value`,
				`metadata.annotations[muster.dev/size]: Invalid value: "two"`,
				`metadata.annotations[muster.dev/runtime]: Unsupported value: "tgi"`,
				`spec.containers[0].command: Required value`,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			if tc.cfg != nil {
				cfg = *tc.cfg
			}
			pod := validPod()
			tc.change(pod)
			resp := testHandler(cfg).admit(t.Context(), createRequest(mustJSON(t, pod)))
			if resp.Allowed || resp.Result == nil {
				t.Fatalf("allowed (patch %s); want denied with %q", resp.Patch, tc.want)
			}
			if resp.Patch != nil {
				t.Errorf("a denial carries a patch: %s", resp.Patch)
			}
			st := resp.Result
			wantCode := tc.code
			if wantCode == 0 {
				wantCode = 422
			}
			if st.Code != wantCode || st.Status != metav1.StatusFailure {
				t.Errorf("status code %d %q, want %d Failure", st.Code, st.Status, wantCode)
			}
			if st.Details == nil || len(st.Details.Causes) != len(tc.want) {
				t.Fatalf("message %q with causes %+v: want exactly %d", st.Message, st.Details, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(st.Message, w) {
					t.Errorf("message %q\nlacks %q", st.Message, w)
				}
				c := st.Details.Causes[i]
				if !strings.HasPrefix(w, c.Field+": ") {
					t.Errorf("cause %d names field %q; want the path of %q", i, c.Field, w)
				}
			}
			if len(tc.want) == 1 && !strings.HasPrefix(st.Message, tc.want[0]) {
				t.Errorf("message %q: want it to be the field error alone, %q...", st.Message, tc.want[0])
			}
		})
	}
}

// TestGroupSources: the group's name comes from muster's label, else
// scheduler-plugins' label, else spec.schedulingGroup; the size from the
// annotation, else a PodGroup for scheduler-plugins' label.
func TestGroupSources(t *testing.T) {
	pgName := "upstream-pg"
	tests := []struct {
		name      string
		change    func(*corev1.Pod)
		group     string
		size      string
		noOrdinal bool
	}{
		{"muster label wins", func(p *corev1.Pod) { p.Labels["scheduling.x-k8s.io/pod-group"] = "vllm-0" }, "g", "2", true},
		{"pod-group label with its PodGroup's size", func(p *corev1.Pod) {
			p.Namespace = "serving"
			delete(p.Labels, "muster.dev/group")
			delete(p.Annotations, "muster.dev/size")
			p.Labels["scheduling.x-k8s.io/pod-group"] = "vllm-0"
		}, "vllm-0", "2", true},
		{"pod-group label with a size annotation", func(p *corev1.Pod) {
			delete(p.Labels, "muster.dev/group")
			p.Labels["scheduling.x-k8s.io/pod-group"] = "other"
			p.Annotations["muster.dev/size"] = " 6 "
		}, "other", "6", true},
		{"upstream schedulingGroup sized by its gang minCount", func(p *corev1.Pod) {
			delete(p.Labels, "muster.dev/group")
			delete(p.Annotations, "muster.dev/size")
			p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: &pgName}
		}, pgName, "2", true},
		{"upstream schedulingGroup and an agreeing label and size", func(p *corev1.Pod) {
			p.Labels["muster.dev/group"] = pgName
			p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: &pgName}
		}, pgName, "2", true},
		{"LeaderWorkerSet labels", func(p *corev1.Pod) {
			delete(p.Labels, "muster.dev/group")
			delete(p.Annotations, "muster.dev/size")
			p.Labels["leaderworkerset.sigs.k8s.io/name"] = "vllm"
			p.Labels["leaderworkerset.sigs.k8s.io/group-index"] = "1"
			p.Labels["leaderworkerset.sigs.k8s.io/worker-index"] = "2"
			p.Annotations["leaderworkerset.sigs.k8s.io/size"] = "4"
		}, "vllm-1", "4", false},
		{"KServe head: rank 0, size from RAY_NODE_COUNT", func(p *corev1.Pod) { kserve(p, true) }, "llm-7", "4", false},
		{"KServe worker: size from RAY_NODE_COUNT, no ordinal", func(p *corev1.Pod) { kserve(p, false) }, "llm-7", "4", true},
		{"KServe worker with an ordinal hint", func(p *corev1.Pod) {
			kserve(p, false)
			p.Annotations["muster.dev/ordinal"] = "3"
		}, "llm-7", "4", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := validPod()
			tc.change(pod)
			raw := mustJSON(t, pod)
			resp := testHandler(testConfig()).admit(t.Context(), createRequest(raw))
			if !resp.Allowed {
				t.Fatalf("denied: %s", resp.Result.Message)
			}
			var got corev1.Pod
			json.Unmarshal(applyPatch(t, raw, resp), &got)
			env := map[string]string{}
			for _, e := range got.Spec.Containers[0].Env {
				env[e.Name] = e.Value
			}
			if env["MUSTER_GROUP"] != tc.group || env["MUSTER_SIZE"] != tc.size {
				t.Errorf("MUSTER_GROUP=%q MUSTER_SIZE=%q, want %q and %q", env["MUSTER_GROUP"], env["MUSTER_SIZE"], tc.group, tc.size)
			}
			if _, ok := env["MUSTER_ORDINAL"]; ok == tc.noOrdinal {
				t.Errorf("MUSTER_ORDINAL present %v, want %v", ok, !tc.noOrdinal)
			}
		})
	}
}

// TestDiff checks the patch against the apiserver's patch library on list
// and map changes inject does not make today (a middle insertion, a
// removal, a replaced value), so that a later change to inject cannot
// produce a patch that does not apply.
func TestDiff(t *testing.T) {
	base := validPod()
	base.Spec.Volumes = []corev1.Volume{{Name: "a"}, {Name: "b"}}
	base.Spec.Containers[0].Args = []string{"x"}
	base.Annotations["a/b~c"] = "1"
	tests := map[string]func(*corev1.Pod){
		"nothing": func(*corev1.Pod) {},
		"prepend": func(p *corev1.Pod) {
			p.Spec.Volumes = append([]corev1.Volume{{Name: "z"}, {Name: "y"}}, p.Spec.Volumes...)
		},
		"append":         func(p *corev1.Pod) { p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "z"}) },
		"insert between": func(p *corev1.Pod) { p.Spec.Volumes = slices.Insert(p.Spec.Volumes, 1, corev1.Volume{Name: "z"}) },
		"shrink":         func(p *corev1.Pod) { p.Spec.Volumes = p.Spec.Volumes[:1] },
		"empty list":     func(p *corev1.Pod) { p.Spec.Volumes = nil },
		"escaped key":    func(p *corev1.Pod) { p.Annotations["a/b~c"] = "2"; p.Annotations["new/key"] = "v" },
		"removed key":    func(p *corev1.Pod) { delete(p.Annotations, "a/b~c") },
		"no annotations": func(p *corev1.Pod) { p.Annotations = nil },
		"new args":       func(p *corev1.Pod) { p.Spec.Containers[0].Args = []string{"y", "z"} },
		"no args":        func(p *corev1.Pod) { p.Spec.Containers[0].Args = nil },
		"scheduler":      func(p *corev1.Pod) { p.Spec.SchedulerName = "s" },
		"new container": func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "c2", Image: "i"})
		},
		"first gate": func(p *corev1.Pod) {
			p.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: "x"}}
		},
	}
	for name, change := range tests {
		t.Run(name, func(t *testing.T) {
			old := base.DeepCopy()
			want := base.DeepCopy()
			change(want)
			raw := mustJSON(t, old)
			pt := admissionv1.PatchTypeJSONPatch
			resp := &admissionv1.AdmissionResponse{PatchType: &pt}
			if ops := diff(old, want); len(ops) > 0 {
				resp.Patch = mustJSON(t, ops)
			}
			var got corev1.Pod
			if err := json.Unmarshal(applyPatch(t, raw, resp), &got); err != nil {
				t.Fatal(err)
			}
			if !equality.Semantic.DeepEqual(&got, want) {
				t.Errorf("patch %s turned the pod into\n%s\nwant\n%s", resp.Patch, mustJSON(t, &got), mustJSON(t, want))
			}
		})
	}
}

// kserve makes p a pod of the multi-node InferenceService "llm" at
// generation 7 as KServe v0.17 makes them: the head (Deployment
// llm-predictor) or a worker (llm-predictor-worker), its container
// carrying KServe's node count, annotated with nothing but
// muster.dev/inject.
func kserve(p *corev1.Pod, head bool) {
	app, container := "isvc.llm-predictor-worker", "worker-container"
	if head {
		app, container = "isvc.llm-predictor", "kserve-container"
	}
	p.Labels = map[string]string{
		"serving.kserve.io/inferenceservice": "llm", "isvc.generation": "7",
		"component": "predictor", "app": app,
	}
	p.Annotations = map[string]string{podapi.AnnotationInject: "true"}
	p.Spec.Containers[0].Name = container
	p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "RAY_NODE_COUNT", Value: "4"}, {Name: "REQUEST_GPU_COUNT", Value: "1"}}
}

// TestLWSWebhookFindsNothingToAdd: LeaderWorkerSet's pod webhook adds its
// env (LWS_LEADER_ADDRESS, LWS_GROUP_SIZE, LWS_WORKER_INDEX) to every
// container and init container, on create (before muster's webhook) and
// again on every update. The injected pod must already carry them
// everywhere, or its next update (the garbage collector removing the
// foregroundDeletion finalizer when LWS recreates a group) would change
// its spec and be refused, and the pod would never go away.
func TestLWSWebhookFindsNothingToAdd(t *testing.T) {
	lwsEnv := []corev1.EnvVar{
		{Name: "LWS_LEADER_ADDRESS", Value: "vllm-1.vllm.ns"},
		{Name: "LWS_GROUP_SIZE", Value: "4"},
		{Name: "LWS_WORKER_INDEX", Value: "2"},
	}
	// What LWS's webhook does (sigs.k8s.io/lws v0.7.0 AddLWSVariables).
	lwsDefault := func(spec *corev1.PodSpec) {
		add := func(c *corev1.Container) {
			for _, e := range lwsEnv {
				if !slices.ContainsFunc(c.Env, func(have corev1.EnvVar) bool { return have.Name == e.Name }) {
					c.Env = append(c.Env, e)
				}
			}
		}
		for i := range spec.Containers {
			add(&spec.Containers[i])
		}
		for i := range spec.InitContainers {
			add(&spec.InitContainers[i])
		}
	}
	pod := validPod()
	delete(pod.Labels, "muster.dev/group")
	delete(pod.Annotations, "muster.dev/size")
	pod.Labels["leaderworkerset.sigs.k8s.io/name"] = "vllm"
	pod.Labels["leaderworkerset.sigs.k8s.io/group-index"] = "1"
	pod.Labels["leaderworkerset.sigs.k8s.io/worker-index"] = "2"
	pod.Annotations["leaderworkerset.sigs.k8s.io/size"] = "4"
	lwsDefault(&pod.Spec) // LWS's create call, first
	raw := mustJSON(t, pod)
	resp := testHandler(testConfig()).admit(t.Context(), createRequest(raw))
	if !resp.Allowed {
		t.Fatalf("denied: %s", resp.Result.Message)
	}
	var got corev1.Pod
	if err := json.Unmarshal(applyPatch(t, raw, resp), &got); err != nil {
		t.Fatal(err)
	}
	updated := got.Spec.DeepCopy()
	lwsDefault(updated) // LWS's call on a later update
	if !equality.Semantic.DeepEqual(got.Spec, *updated) {
		t.Errorf("LWS's webhook would change the injected pod's spec on update (the apiserver refuses that): init containers %+v, after it %+v", got.Spec.InitContainers, updated.InitContainers)
	}
}
