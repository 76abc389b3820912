package kserve_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/e2e/e2etest"
	"github.com/muster-dev/muster/e2e/kserve"
	"github.com/muster-dev/muster/test/clustertest"
)

func TestMain(m *testing.M) { clustertest.Main(m) }

const (
	isvcName = "tp"
	size     = 4
	// The labels KServe v0.17 puts on the pods of a multi-node
	// InferenceService (pkg/constants).
	labelISVC = "serving.kserve.io/inferenceservice"
	labelGen  = "isvc.generation"
	labelApp  = "app"
	headApp   = "isvc." + isvcName + "-predictor"
)

// env is one test's cluster, with KServe's manager and muster's
// ClusterServingRuntime for the demo model installed.
type env struct {
	c    *cluster.Cluster
	root string
	cs   kubernetes.Interface
	dyn  dynamic.Interface
}

// TestInferenceService runs KServe's own controller manager on the local
// cluster and a multi-node InferenceService of the torch model (4 pods:
// KServe's head Deployment and worker Deployment) through it, first with
// muster (annotated muster.dev/inject and nothing else), then the same
// without muster, and logs what each did, side by side.
func TestInferenceService(t *testing.T) {
	e2etest.TorchPython(t)
	root, err := clustertest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	kubeBins := clustertest.Bins(t)
	began := time.Now()
	bin, moduleDir, err := kserve.Build(t.Context(), root, kubeBins)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Logf("make kserve-bin took %s", d.Round(time.Second))
	}
	crds, err := kserve.CRDs(moduleDir)
	if err != nil {
		t.Fatal(err)
	}
	c := e2etest.ProcessCluster(t, root, crds...)
	began = time.Now()
	if _, err := kserve.Start(t.Context(), c, bin, moduleDir); err != nil {
		t.Fatal(err)
	}
	t.Logf("KServe's manager running, its webhooks reachable, in %s", time.Since(began).Round(time.Millisecond))
	dyn, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{c: c, root: root, cs: c.Clientset(), dyn: dyn}
	// Through KServe's ClusterServingRuntime validating webhook.
	if kinds := e2etest.CreateFile(t, c, "", root, "deploy/kserve/torch-tp-runtime.yaml"); strings.Join(kinds, ",") != "ClusterServingRuntime" {
		t.Fatalf("torch-tp-runtime.yaml: kinds %v, want one ClusterServingRuntime", kinds)
	}
	t.Run("WithMuster", e.withMuster)
	t.Run("WithoutMuster", e.withoutMuster)
	t.Run("RuntimesOfDeployKServe", e.runtimes)
}

// runtimes: deploy/kserve's vLLM and DeepSpeed ClusterServingRuntimes
// pass KServe's validating webhook, and an InferenceService of each (2
// pods of 8 GPUs: tensor parallel 8, pipeline parallel 2) annotated only
// muster.dev/inject gives pods that muster's webhook admits as one group
// of 2 with the runtime's preset, and its scheduler binds together. The
// images' programs (vllm, deepspeed) do not exist here, so nothing is
// served: this checks what KServe and muster make of the runtimes.
func (e *env) runtimes(t *testing.T) {
	for _, rt := range []struct{ file, name, preset string }{
		{"vllm-runtime.yaml", "muster-vllm-multinode", "vllm"},
		{"deepspeed-runtime.yaml", "muster-deepspeed", "deepspeed"},
	} {
		t.Run(rt.preset, func(t *testing.T) {
			if kinds := e2etest.CreateFile(t, e.c, "", e.root, "deploy/kserve/"+rt.file); strings.Join(kinds, ",") != "ClusterServingRuntime" {
				t.Fatalf("%s: kinds %v, want one ClusterServingRuntime", rt.file, kinds)
			}
			ns := clustertest.Namespace(t, e.c)
			e.modelsPVC(t, ns)
			// KServe counts GPUs from requests.
			gpus := map[string]any{"requests": map[string]any{"nvidia.com/gpu": "8"}, "limits": map[string]any{"nvidia.com/gpu": "8"}}
			isvc := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
				"metadata": map[string]any{"name": isvcName, "annotations": map[string]any{
					"serving.kserve.io/deploymentMode":  "Standard",
					"serving.kserve.io/autoscalerClass": "none",
					"muster.dev/inject":                 "true",
				}},
				"spec": map[string]any{"predictor": map[string]any{
					"model": map[string]any{
						"modelFormat": map[string]any{"name": "huggingface"}, "runtime": rt.name,
						"storageUri": "pvc://models/llama", "resources": gpus,
					},
					"workerSpec": map[string]any{
						"tensorParallelSize": int64(8), "pipelineParallelSize": int64(2),
						"containers": []any{map[string]any{"name": "worker-container", "resources": gpus}},
					},
				}},
			}}
			if rt.preset == "deepspeed" {
				unstructured.SetNestedField(isvc.Object, "deepspeed", "spec", "predictor", "model", "modelFormat", "name")
			}
			if _, err := e.dyn.Resource(kserve.InferenceServices).Namespace(ns).Create(context.Background(), isvc, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			pods := e.waitPods(t, ns, 2*time.Minute, "2 pods bound", func(ps []v1.Pod) bool {
				return len(ps) == 2 && !slices.ContainsFunc(ps, func(p v1.Pod) bool { return p.Spec.NodeName == "" })
			})
			for _, p := range pods {
				c := p.Spec.Containers[0]
				env := map[string]string{}
				for _, ev := range c.Env {
					env[ev.Name] = ev.Value
				}
				want := map[string]string{"MUSTER_GROUP": isvcName + "-1", "MUSTER_SIZE": "2", "MUSTER_RUNTIME": rt.preset, "MUSTER_PORT": "8000", "MUSTER_GPUS_PER_NODE": "8"}
				for k, v := range want {
					if env[k] != v {
						t.Errorf("%s: %s=%q, want %q", p.Name, k, env[k], v)
					}
				}
				if p.Spec.SchedulerName != "muster-scheduler" || c.Command[0] != "/muster/bin/agent" || !slices.Contains(c.Command, rt.preset) {
					t.Errorf("%s: scheduler %q, command %v; want muster's, the agent wrapping %s", p.Name, p.Spec.SchedulerName, c.Command, rt.preset)
				}
			}
			t.Logf("%s: KServe made 2 pods of %s, muster admitted them as group %s-1 (preset %s) and bound them together", rt.name, rt.file, isvcName, rt.preset)
			if err := e.dyn.Resource(kserve.InferenceServices).Namespace(ns).Delete(context.Background(), isvcName, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// withMuster: the InferenceService of deploy/examples/kserve-torch.yaml.
func (e *env) withMuster(t *testing.T) {
	ns := clustertest.Namespace(t, e.c)
	e.modelsPVC(t, ns)
	gang := e2etest.WatchGang(t, e.cs, ns, size, groupOf)
	ready := e.watchReady(t, ns)

	start := time.Now()
	if kinds := e2etest.CreateExample(t, e.c, ns, e.root, "kserve-torch.yaml"); strings.Join(kinds, ",") != "InferenceService" {
		t.Fatalf("kserve-torch.yaml: kinds %v, want an InferenceService", kinds)
	}
	first := e.firstAnswer(t, ns, start)
	pods := e.waitPods(t, ns, 3*time.Minute, "generation 1 Ready", generationReady("1"))
	e.waitISVCReady(t, ns)
	phases := ready.phases(start)
	t.Logf("with muster: %s; first answer %s after apply: world size %d, generation %q",
		phases, first.after.Round(time.Millisecond), first.p.WorldSize, first.gen)
	if first.p.WorldSize != size || first.gen != "0" {
		t.Errorf("first answer from world size %d in generation %q, want the whole group of %d in generation 0", first.p.WorldSize, first.gen, size)
	}
	if lie := ready.readyWhilePartial(); lie != "" {
		t.Errorf("the InferenceService was Ready while its group was not: %s", lie)
	}
	e.checkGroup(t, ns, pods, "1", "0")
	if v := gang.Violations(); len(v) > 0 {
		t.Errorf("pods bound before their whole group existed:\n  %s", strings.Join(v, "\n  "))
	}
	head := e.serviceAddrs(t, ns, 1)

	// A worker is deleted. Its Deployment makes a new pod; muster restarts
	// the group in place (the head and the other workers keep their pods)
	// with the new pod in the freed rank. Meanwhile KServe's Service
	// answers 503 from muster's endpoint (the group is not whole) and the
	// InferenceService is not Ready.
	var victim v1.Pod
	for _, p := range pods {
		if p.Labels[labelApp] != headApp {
			victim = p
			break
		}
	}
	before := map[string]types.UID{}
	for _, p := range pods {
		before[p.Name] = p.UID
	}
	probe := e2etest.StartProbe(head)
	ready.mark()
	healStart := time.Now()
	if err := e.cs.CoreV1().Pods(ns).Delete(context.Background(), victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	pods = e.waitPods(t, ns, 3*time.Minute, "generation 1 healed", func(ps []v1.Pod) bool {
		for _, p := range ps {
			if p.UID == victim.UID {
				return false
			}
		}
		return generationReady("1")(ps)
	})
	got, hdr := e2etest.Predict(t, head[0])
	healed := time.Since(healStart)
	e.waitISVCReady(t, ns)
	ok, failed, gens := probe.Stop()
	t.Logf("with muster: worker %s deleted: barrier of generation 1 released %s after, the group answered again (generation %s, world size %d) after %s; %d requests answered, %d refused over %s (%v by generation); InferenceService not Ready for %s",
		victim.Name, e.barrier(ns, isvcName+"-1", 1, healStart), hdr.Get("X-Muster-Generation"), got.WorldSize, healed.Round(time.Millisecond), ok, len(failed), probe.Outage().Round(time.Millisecond), gens, ready.notReadySinceMark().Round(time.Millisecond))
	if g := hdr.Get("X-Muster-Generation"); g == "0" || g == "" || got.WorldSize != size {
		t.Errorf("after the heal: generation %q, world size %d; want a new generation of %d", g, got.WorldSize, size)
	}
	if ready.notReadySinceMark() == 0 {
		t.Errorf("the InferenceService stayed Ready while a worker was gone and the group re-formed")
	}
	for _, p := range pods {
		if uid, ok := before[p.Name]; ok && uid != p.UID {
			t.Errorf("%s was recreated; only %s should have been", p.Name, victim.Name)
		}
	}
	e.checkGroup(t, ns, pods, "1", "")

	// A change to the InferenceService: generation 2. KServe rolls both
	// Deployments (the workers with maxSurge 100%); the new pods form
	// group tp-2 of their own, whole, while tp-1 serves until KServe
	// retires it.
	probe = e2etest.StartProbeFunc(func() []string { return e.readyAddrs(ns) })
	rollStart := time.Now()
	patch := `{"spec":{"predictor":{"model":{"env":[{"name":"ROLLOUT","value":"2"}]}}}}`
	if _, err := e.dyn.Resource(kserve.InferenceServices).Namespace(ns).Patch(context.Background(), isvcName, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	pods = e.waitPods(t, ns, 4*time.Minute, "generation 2 Ready and generation 1 gone", func(ps []v1.Pod) bool {
		for _, p := range ps {
			if p.Labels[labelGen] != "2" {
				return false
			}
		}
		return generationReady("2")(ps)
	})
	rolled := time.Since(rollStart)
	e.waitISVCReady(t, ns)
	ok, failed, gens = probe.Stop()
	t.Logf("with muster: rollout to generation 2: the new group whole and the old one gone in %s; %d requests answered, %d failed (%v by generation)",
		rolled.Round(time.Millisecond), ok, len(failed), gens)
	e.checkGroup(t, ns, pods, "2", "0")
	if v := gang.Violations(); len(v) > 0 {
		t.Errorf("pods bound before their whole group existed:\n  %s", strings.Join(v, "\n  "))
	}
	if got, _ := e2etest.Predict(t, e.serviceAddrs(t, ns, 1)[0]); got.WorldSize != size {
		t.Errorf("after the rollout the Service answered from world size %d, want %d", got.WorldSize, size)
	}
}

// withoutMuster: the same InferenceService without muster.dev/inject, its
// model's port declared so that KServe's Service reaches it (without
// muster nothing listens on KServe's default 8080). KServe starts the head
// and the workers independently and nobody gives them RANK or
// MASTER_ADDR: the demo model then runs as a group of one in every pod (a
// real tensor-parallel runtime would fail or hang instead). What it does
// is logged; it asserts only what makes the comparison hold.
func (e *env) withoutMuster(t *testing.T) {
	ns := clustertest.Namespace(t, e.c)
	e.modelsPVC(t, ns)
	gang := e2etest.WatchGang(t, e.cs, ns, size, groupOf)
	ready := e.watchReady(t, ns)
	b, err := os.ReadFile(filepath.Join(e.root, "deploy", "examples", "kserve-torch.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var obj unstructured.Unstructured
	if err := yaml.Unmarshal(b, &obj.Object); err != nil {
		t.Fatal(err)
	}
	ann := obj.GetAnnotations()
	delete(ann, "muster.dev/inject")
	obj.SetAnnotations(ann)
	if err := unstructured.SetNestedSlice(obj.Object, []any{map[string]any{"name": "http", "containerPort": int64(8000), "protocol": "TCP"}}, "spec", "predictor", "model", "ports"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := e.dyn.Resource(kserve.InferenceServices).Namespace(ns).Create(context.Background(), &obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	first := e.firstAnswer(t, ns, start)
	pods := e.waitPods(t, ns, 3*time.Minute, "all pods running", func(ps []v1.Pod) bool {
		return len(ps) == size && !slices.ContainsFunc(ps, func(p v1.Pod) bool { return !e2etest.PodReady(&p) })
	})
	e.waitISVCReady(t, ns)
	t.Logf("without muster: %s; first answer %s after apply: world size %d (each pod runs the model alone)",
		ready.phases(start), first.after.Round(time.Millisecond), first.p.WorldSize)
	t.Logf("without muster: %d pods bound while fewer than %d of the InferenceService existed (default-scheduler, no gang)", len(gang.Violations()), size)
	for _, p := range pods {
		if p.Spec.SchedulerName != v1.DefaultSchedulerName || len(p.Spec.ReadinessGates) > 0 {
			t.Errorf("%s: scheduler %q, readiness gates %v: muster touched a pod that did not ask", p.Name, p.Spec.SchedulerName, p.Spec.ReadinessGates)
		}
	}
	if first.p.WorldSize != 1 {
		t.Errorf("without muster the model answered from world size %d; the comparison assumes each pod alone (1)", first.p.WorldSize)
	}
	// A worker deleted: nothing forms a group, so nothing heals one; the
	// head keeps answering alone.
	var victim string
	for _, p := range pods {
		if p.Labels[labelApp] != headApp {
			victim = p.Name
			break
		}
	}
	probe := e2etest.StartProbe(e.serviceAddrs(t, ns, 1))
	ready.mark()
	if err := e.cs.CoreV1().Pods(ns).Delete(context.Background(), victim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitPods(t, ns, 3*time.Minute, "the worker replaced", func(ps []v1.Pod) bool {
		return len(ps) == size && !slices.ContainsFunc(ps, func(p v1.Pod) bool { return p.Name == victim || !e2etest.PodReady(&p) })
	})
	ok, failed, _ := probe.Stop()
	t.Logf("without muster: worker %s deleted: %d requests answered, %d failed, by the head alone; InferenceService not Ready for %s",
		victim, ok, len(failed), ready.notReadySinceMark().Round(time.Millisecond))
}

// barrier says when, after since, the coordinator's log says the barrier
// of group's generation gen was released ("?" when it does not say).
func (e *env) barrier(ns, group string, gen int, since time.Time) string {
	b, err := os.ReadFile(filepath.Join(e.c.Dir(), "logs", "coordinator.log"))
	if err != nil {
		return "?"
	}
	want := fmt.Sprintf("barrier released: %d members joined generation %d", size, gen)
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, want) || !strings.Contains(line, "group="+ns+"/"+group+" ") {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		if at, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			return at.Sub(since).Round(10 * time.Millisecond).String()
		}
	}
	return "?"
}

// groupOf is the group a pod of the InferenceService belongs to in
// muster's terms: one per generation.
func groupOf(p *v1.Pod) string { return p.Labels[labelISVC] + "-" + p.Labels[labelGen] }

// generationReady: exactly size live pods of generation gen, all Ready.
func generationReady(gen string) func([]v1.Pod) bool {
	return func(ps []v1.Pod) bool {
		n := 0
		for i := range ps {
			if ps[i].Labels[labelGen] != gen || ps[i].DeletionTimestamp != nil {
				continue
			}
			if !e2etest.PodReady(&ps[i]) {
				return false
			}
			n++
		}
		return n == size
	}
}

// modelsPVC makes the PVC "models" the example's storageUri names (KServe
// mounts it; the demo model reads nothing from it), bound to a hostPath
// PersistentVolume of its own.
func (e *env) modelsPVC(t *testing.T, ns string) {
	t.Helper()
	pvName := "models-" + ns
	quantity := resource.MustParse("1Gi")
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName},
		Spec: v1.PersistentVolumeSpec{
			Capacity:                      v1.ResourceList{v1.ResourceStorage: quantity},
			AccessModes:                   []v1.PersistentVolumeAccessMode{v1.ReadWriteMany},
			PersistentVolumeReclaimPolicy: v1.PersistentVolumeReclaimRetain,
			StorageClassName:              "manual",
			PersistentVolumeSource:        v1.PersistentVolumeSource{HostPath: &v1.HostPathVolumeSource{Path: t.TempDir()}},
			ClaimRef:                      &v1.ObjectReference{Namespace: ns, Name: "models"},
		},
	}
	if _, err := e.cs.CoreV1().PersistentVolumes().Create(context.Background(), pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.cs.CoreV1().PersistentVolumes().Delete(context.Background(), pvName, metav1.DeleteOptions{}) })
	class := "manual"
	pvc := &v1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "models", Namespace: ns},
		Spec: v1.PersistentVolumeClaimSpec{
			AccessModes:      []v1.PersistentVolumeAccessMode{v1.ReadWriteMany},
			StorageClassName: &class,
			VolumeName:       pvName,
			Resources:        v1.VolumeResourceRequirements{Requests: v1.ResourceList{v1.ResourceStorage: quantity}},
		},
	}
	if _, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Create(context.Background(), pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// answer is the first prediction the InferenceService's Service gave.
type answer struct {
	p     e2etest.Prediction
	gen   string
	after time.Duration
}

// firstAnswer asks the <isvc>-predictor Service's ready endpoints for a
// prediction every 100 ms from start until one answers (3 minutes at most).
func (e *env) firstAnswer(t *testing.T, ns string, start time.Time) answer {
	t.Helper()
	var a answer
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := e.c.Err(); err != nil {
			return false, err
		}
		for _, addr := range e.readyAddrs(ns) {
			if p, hdr, err := e2etest.TryPredict(addr); err == nil {
				a = answer{p: p, gen: hdr.Get("X-Muster-Generation"), after: time.Since(start)}
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		e.fail(t, ns, fmt.Sprintf("no answer from Service %s-predictor within 3m: %v", isvcName, err))
	}
	return a
}

// readyAddrs are the ready endpoints (ip:port) of the InferenceService's
// Service, <isvc>-predictor, from its EndpointSlices: what kube-proxy
// would send to.
func (e *env) readyAddrs(ns string) []string {
	list, err := e.cs.DiscoveryV1().EndpointSlices(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + isvcName + "-predictor"})
	if err != nil {
		return nil
	}
	var out []string
	for _, sl := range list.Items {
		if len(sl.Ports) == 0 || sl.Ports[0].Port == nil {
			continue
		}
		for _, ep := range sl.Endpoints {
			if len(ep.Addresses) > 0 && ep.Conditions.Ready != nil && *ep.Conditions.Ready {
				out = append(out, fmt.Sprintf("%s:%d", ep.Addresses[0], *sl.Ports[0].Port))
			}
		}
	}
	sort.Strings(out)
	return out
}

// serviceAddrs waits until the Service has n ready endpoints.
func (e *env) serviceAddrs(t *testing.T, ns string, n int) []string {
	t.Helper()
	var addrs []string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		addrs = e.readyAddrs(ns)
		return len(addrs) == n, nil
	})
	if err != nil {
		e.fail(t, ns, fmt.Sprintf("Service %s-predictor: ready endpoints %v, want %d", isvcName, addrs, n))
	}
	return addrs
}

// checkGroup checks that every pod (all of generation gen) was injected
// and joined group <isvc>-<gen> of size 4 with KServe's numbers, the head
// at rank 0 (MUSTER_ORDINAL 0) and the workers at ranks 1-3, and last
// launched its runtime in muster generation mgen ("" for any but 0).
func (e *env) checkGroup(t *testing.T, ns string, pods []v1.Pod, gen, mgen string) {
	t.Helper()
	ranks := map[string]string{}
	for _, p := range pods {
		c := p.Spec.Containers[0]
		if p.Spec.SchedulerName != "muster-scheduler" || len(p.Spec.InitContainers) == 0 || c.Command[0] != "/muster/bin/agent" {
			t.Errorf("%s was not injected: scheduler %q, %d init containers, command %v", p.Name, p.Spec.SchedulerName, len(p.Spec.InitContainers), c.Command)
			continue
		}
		head := p.Labels[labelApp] == headApp
		want := map[string]string{"MUSTER_GROUP": isvcName + "-" + gen, "MUSTER_SIZE": strconv.Itoa(size)}
		if head {
			want["MUSTER_ORDINAL"] = "0"
		}
		for _, ev := range c.Env {
			if w, ok := want[ev.Name]; ok {
				if ev.Value != w {
					t.Errorf("%s: %s=%q, want %q", p.Name, ev.Name, ev.Value, w)
				}
				delete(want, ev.Name)
			}
			if ev.Name == "MUSTER_ORDINAL" && !head {
				t.Errorf("%s, a worker, has MUSTER_ORDINAL=%s; workers take ranks 1-3 in order of arrival", p.Name, ev.Value)
			}
		}
		if len(want) > 0 {
			t.Errorf("%s: no %v in its env", p.Name, want)
		}
		g, rank, world, err := e2etest.RankFromContainerLogs(e.cs, ns, p.Name, c.Name)
		if err != nil {
			t.Error(err)
			continue
		}
		if world != strconv.Itoa(size) || (mgen != "" && g != mgen) || (mgen == "" && (g == "" || g == "0")) || (head != (rank == "0")) {
			t.Errorf("%s (head %v): rank %s of %s in muster generation %s; want the head at rank 0 of %d, generation %s", p.Name, head, rank, world, g, size, orAny(mgen))
		}
		if other, dup := ranks[rank]; dup {
			t.Errorf("%s and %s both hold rank %s", other, p.Name, rank)
		}
		ranks[rank] = p.Name
	}
}

func orAny(gen string) string {
	if gen == "" {
		return "> 0"
	}
	return gen
}

// waitPods waits until done holds for the InferenceService's pods and
// returns them; on timeout it says where each pod is.
func (e *env) waitPods(t *testing.T, ns string, timeout time.Duration, what string, done func([]v1.Pod) bool) []v1.Pod {
	t.Helper()
	var pods []v1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := e.c.Err(); err != nil {
			return false, err
		}
		list, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: labelISVC + "=" + isvcName})
		if err != nil {
			return false, nil
		}
		pods = nil
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil {
				pods = append(pods, p)
			}
		}
		return done(pods), nil
	})
	if err != nil {
		e.fail(t, ns, fmt.Sprintf("%s: not within %s (%v)", what, timeout, err))
	}
	return pods
}

// waitISVCReady waits for the InferenceService's Ready condition.
func (e *env) waitISVCReady(t *testing.T, ns string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		ready, _ := e.isvcReady(ctx, ns)
		return ready, nil
	})
	if err != nil {
		_, why := e.isvcReady(context.Background(), ns)
		e.fail(t, ns, "InferenceService not Ready within 2m: "+why)
	}
}

// isvcReady reads the InferenceService's Ready condition, and its
// conditions for messages. KServe v0.17.0 never says True for a whole
// multi-node InferenceService in Standard mode, only Unknown: its status
// merges the head's and the workers' Deployment conditions, then compares
// the merged reason with one Deployment's (kserve#5703, fixed after
// v0.17). So Unknown counts as Ready here exactly when the fixed KServe
// says True: both Deployments Available. False never does.
func (e *env) isvcReady(ctx context.Context, ns string) (bool, string) {
	obj, err := e.dyn.Resource(kserve.InferenceServices).Namespace(ns).Get(ctx, isvcName, metav1.GetOptions{})
	if err != nil {
		return false, err.Error()
	}
	status, why := conditions(obj, "Ready")
	switch status {
	case "True":
		return true, why
	case "Unknown":
		for _, name := range []string{isvcName + "-predictor", isvcName + "-predictor-worker"} {
			d, err := e.cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil || !slices.ContainsFunc(d.Status.Conditions, func(c appsv1.DeploymentCondition) bool {
				return c.Type == appsv1.DeploymentAvailable && c.Status == v1.ConditionTrue
			}) {
				return false, why
			}
		}
		return true, why + "(Unknown with both Deployments Available: kserve#5703)"
	}
	return false, why
}

// conditions reads obj's status condition of type typ (its status, "" when
// absent) and all its conditions for messages.
func conditions(obj *unstructured.Unstructured, typ string) (status, all string) {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	var b strings.Builder
	for _, c := range conds {
		m, _ := c.(map[string]any)
		fmt.Fprintf(&b, "%v=%v (%v %v) ", m["type"], m["status"], m["reason"], m["message"])
		if m["type"] == typ {
			status, _ = m["status"].(string)
		}
	}
	return status, b.String()
}

// readiness samples, every 100 ms, whether the InferenceService is Ready
// and how many of its current generation's pods are: the times of each
// phase from apply, and whether KServe ever called it Ready while its
// group was not.
type readiness struct {
	mu      sync.Mutex
	samples []sample
	markAt  time.Time
}

type sample struct {
	at                          time.Time
	pods, bound, podsReady, gen int
	isvcReady                   bool
}

func (e *env) watchReady(t *testing.T, ns string) *readiness {
	r := &readiness{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			s := sample{at: time.Now()}
			s.isvcReady, _ = e.isvcReady(ctx, ns)
			if list, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: labelISVC + "=" + isvcName}); err == nil {
				for _, p := range list.Items {
					if g, _ := strconv.Atoi(p.Labels[labelGen]); g > s.gen {
						s.gen = g
					}
				}
				for i, p := range list.Items {
					if g, _ := strconv.Atoi(p.Labels[labelGen]); g != s.gen || p.DeletionTimestamp != nil {
						continue
					}
					s.pods++
					if p.Spec.NodeName != "" {
						s.bound++
					}
					if e2etest.PodReady(&list.Items[i]) {
						s.podsReady++
					}
				}
			}
			r.mu.Lock()
			r.samples = append(r.samples, s)
			r.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return r
}

// phases says when, after start, all pods existed, were bound, were
// Ready, and the InferenceService was Ready (first time each).
func (r *readiness) phases(start time.Time) string {
	r.sync()
	r.mu.Lock()
	defer r.mu.Unlock()
	created, bound, ready, isvc := time.Duration(-1), time.Duration(-1), time.Duration(-1), time.Duration(-1)
	for _, s := range r.samples {
		at := s.at.Sub(start).Round(100 * time.Millisecond)
		if created < 0 && s.pods >= size {
			created = at
		}
		if bound < 0 && s.bound >= size {
			bound = at
		}
		if ready < 0 && s.podsReady >= size {
			ready = at
		}
		if isvc < 0 && s.isvcReady {
			isvc = at
		}
	}
	at := func(d time.Duration) string {
		if d < 0 {
			return "never seen"
		}
		return "+" + d.String()
	}
	return fmt.Sprintf("all %d pods created %s, bound %s, Ready %s; InferenceService Ready %s", size, at(created), at(bound), at(ready), at(isvc))
}

// sync waits (up to 2s) for a sample taken after the call, so that what
// the caller has seen is in the samples too.
func (r *readiness) sync() {
	now := time.Now()
	for deadline := now.Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		r.mu.Lock()
		n := len(r.samples)
		seen := n > 0 && r.samples[n-1].at.After(now)
		r.mu.Unlock()
		if seen {
			return
		}
	}
}

// readyWhilePartial finds a sample where KServe said Ready while fewer
// than size pods of the generation were Ready ("" for none).
func (r *readiness) readyWhilePartial() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.samples {
		if s.isvcReady && s.podsReady < size {
			return fmt.Sprintf("at %s: %d of %d pods of generation %d Ready", s.at.Format("15:04:05.000"), s.podsReady, size, s.gen)
		}
	}
	return ""
}

// mark starts a period for notReadySinceMark.
func (r *readiness) mark() {
	r.mu.Lock()
	r.markAt = time.Now()
	r.mu.Unlock()
}

// notReadySinceMark is how long the InferenceService was seen not Ready
// since mark (to the 100 ms of sampling).
func (r *readiness) notReadySinceMark() time.Duration {
	r.sync()
	r.mu.Lock()
	defer r.mu.Unlock()
	var d time.Duration
	var prev time.Time
	for _, s := range r.samples {
		if s.at.Before(r.markAt) {
			continue
		}
		if !prev.IsZero() && !s.isvcReady {
			d += s.at.Sub(prev)
		}
		prev = s.at
	}
	return d
}

// fail ends the test saying where each pod is, with the logs that tell.
func (e *env) fail(t *testing.T, ns, msg string) {
	t.Helper()
	var b strings.Builder
	if list, err := e.cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{}); err == nil {
		for _, p := range list.Items {
			fmt.Fprintf(&b, "\n  %s gen=%s node=%q ip=%s phase=%s conditions=%s", p.Name, p.Labels[labelGen], p.Spec.NodeName, p.Status.PodIP, p.Status.Phase, e2etest.Conditions(&p))
			if len(p.Spec.Containers) > 0 {
				logs, _ := e.cs.CoreV1().Pods(ns).GetLogs(p.Name, &v1.PodLogOptions{Container: p.Spec.Containers[0].Name}).DoRaw(context.Background())
				fmt.Fprintf(&b, "\n    log tail: %s", e2etest.Tail(string(logs), 6))
			}
		}
	}
	if evs, err := e.cs.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{}); err == nil {
		for _, ev := range evs.Items {
			if ev.Type == v1.EventTypeWarning {
				fmt.Fprintf(&b, "\n  event %s/%s: %s: %s", ev.InvolvedObject.Kind, ev.InvolvedObject.Name, ev.Reason, ev.Message)
			}
		}
	}
	_, why := e.isvcReady(context.Background(), ns)
	fmt.Fprintf(&b, "\n  InferenceService conditions: %s", why)
	for _, name := range []string{"scheduler", "kserve-manager", "kserve-llmisvc", "lws-controller", "coordinator"} {
		log, _ := os.ReadFile(filepath.Join(e.c.Dir(), "logs", name+".log"))
		fmt.Fprintf(&b, "\n  %s log tail:\n      %s", name, e2etest.Tail(string(log), 12))
	}
	t.Fatalf("%s:%s", msg, b.String())
}
