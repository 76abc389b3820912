package deploy_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/muster-dev/muster/agent/preset"
	"github.com/muster-dev/muster/coordinator/webhook"
	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/e2e/deploy"
	"github.com/muster-dev/muster/podapi"
)

// registeredName names the webhook configuration startWebhook registers;
// the chart's is named after the release.
const registeredName = "muster-examples"

// startWebhook serves muster's admission webhook in the test process and
// registers it with coordinator/webhook.Register, as the coordinator does
// outside a cluster.
func startWebhook(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	ca, certFile, keyFile, err := webhook.EnsureCerts(t.TempDir(), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- webhook.ServeListener(ctx, ln, certFile, keyFile, webhook.NewHandler(webhookConfig(), slog.New(slog.DiscardHandler)))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	if err := webhook.Register(t.Context(), c.Clientset(), registeredName, "https://"+ln.Addr().String()+"/mutate", ca); err != nil {
		t.Fatal(err)
	}
}

// webhookConfig is the coordinator's webhook configuration (coordinator.go
// startWebhook): the runtimes it accepts are the agent's presets.
func webhookConfig() webhook.Config {
	wc := webhook.DefaultConfig()
	wc.Runtimes = preset.Names()
	return wc
}

// injectAll makes, for every workload among objs, the pods its controller
// would make (with the labels and annotations the controller adds: pod
// index, completion index, LWS name, group index, worker index and size),
// creates each with dry run, and checks that muster's webhook injected the
// agent: the examples' annotations are what the webhook reads, not only
// what the schema allows.
func (a *applier) injectAll(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		pods, err := controllerPods(o)
		if err != nil {
			t.Errorf("%s: %v", deploy.Describe(o), err)
			continue
		}
		for rank, pod := range pods {
			if a.checkInjected(t, o, pod) {
				checkPreset(t, o, pod, rank, len(pods))
			}
		}
	}
}

// checkInjected reports whether pod asks for the agent and got it.
func (a *applier) checkInjected(t *testing.T, owner *unstructured.Unstructured, pod *corev1.Pod) bool {
	t.Helper()
	what := fmt.Sprintf("%s pod %s", deploy.Describe(owner), pod.Name)
	if pod.Annotations[podapi.AnnotationInject] != "true" {
		return false // a gang-scheduling example without the agent
	}
	raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(pod)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: raw}
	u.SetAPIVersion("v1")
	u.SetKind("Pod")
	got, err := a.apply(t.Context(), u)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return false
	}
	var out corev1.Pod
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &out); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(out.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == webhook.InitContainerName }) {
		t.Errorf("%s: the webhook did not inject the agent (no init container %s)", what, webhook.InitContainerName)
		return false
	}
	if out.Spec.EnableServiceLinks == nil || *out.Spec.EnableServiceLinks {
		t.Errorf("%s: want enableServiceLinks: false (a Service named like a runtime's env prefix injects colliding variables)", what)
	}
	for _, c := range pod.Spec.Containers {
		if _, ok := c.Resources.Limits["nvidia.com/gpu"]; !ok {
			t.Errorf("%s container %s: no nvidia.com/gpu limit", what, c.Name)
		}
	}
	return true
}

// checkPreset runs the pod's runtime preset on its command as the agent
// would at this rank: the preset's group check (e.g. vLLM's tensor x
// pipeline parallel size against nodes x GPUs) and the command line it
// builds. An example the agent would refuse fails here.
func checkPreset(t *testing.T, owner *unstructured.Unstructured, pod *corev1.Pod, rank, world int) {
	t.Helper()
	what := fmt.Sprintf("%s pod %s", deploy.Describe(owner), pod.Name)
	name := pod.Annotations[podapi.AnnotationRuntime]
	if name == "" {
		name = "env"
	}
	p, err := preset.Get(name)
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	c := pod.Spec.Containers[0]
	argv := slices.Concat(c.Command, c.Args)
	gpus, _ := c.Resources.Limits["nvidia.com/gpu"]
	a := preset.Assignment{
		Namespace: "default", Group: owner.GetName(), Member: pod.Name,
		Rank: rank, WorldSize: world, LeaderAddr: "10.244.0.2", Port: 29500,
		Address: fmt.Sprintf("10.244.0.%d", rank+2), GPUsPerNode: int(gpus.Value()),
		Dir: "/muster/run",
	}
	for i := range world {
		a.Peers = append(a.Peers, fmt.Sprintf("10.244.0.%d", i+2))
	}
	if p.Check != nil {
		if _, err := p.Check(a, argv); err != nil {
			t.Errorf("%s: the %s preset refuses the group: %v", what, name, err)
			return
		}
	}
	args := argv
	if p.Args != nil {
		var err error
		if args, err = p.Args(a, argv); err != nil {
			t.Errorf("%s: the %s preset refuses the command %q: %v", what, name, argv, err)
			return
		}
	}
	if p.Files != nil {
		if _, err := p.Files(a); err != nil {
			t.Errorf("%s: the %s preset's files: %v", what, name, err)
		}
	}
	t.Logf("%s (rank %d of %d) runs %q", what, rank, world, args)
}

// controllerPods returns the pods a workload's controller would create
// (nil for objects that are not workloads).
func controllerPods(o *unstructured.Unstructured) ([]*corev1.Pod, error) {
	name := o.GetName()
	var tmpl corev1.PodTemplateSpec
	template := func(path ...string) error {
		raw, ok, err := unstructured.NestedMap(o.Object, path...)
		if err != nil || !ok {
			return fmt.Errorf("no %v: %v", path, err)
		}
		return runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &tmpl)
	}
	count := func(path ...string) int64 {
		n, ok, _ := unstructured.NestedInt64(o.Object, path...)
		if !ok {
			return 1
		}
		return n
	}
	pod := func(i int64, labels, annotations map[string]string) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: *tmpl.ObjectMeta.DeepCopy(),
			Spec:       *tmpl.Spec.DeepCopy(),
		}
		p.Name = fmt.Sprintf("%s-%d", name, i)
		p.Namespace = o.GetNamespace()
		p.Labels = merge(p.Labels, labels)
		p.Annotations = merge(p.Annotations, annotations)
		return p
	}
	var pods []*corev1.Pod
	switch o.GroupVersionKind().GroupKind().String() {
	case "StatefulSet.apps":
		if err := template("spec", "template"); err != nil {
			return nil, err
		}
		for i := range count("spec", "replicas") {
			idx := strconv.FormatInt(i, 10)
			pods = append(pods, pod(i, map[string]string{"apps.kubernetes.io/pod-index": idx, "statefulset.kubernetes.io/pod-name": fmt.Sprintf("%s-%d", name, i)}, nil))
		}
	case "Job.batch":
		if err := template("spec", "template"); err != nil {
			return nil, err
		}
		for i := range count("spec", "completions") {
			idx := strconv.FormatInt(i, 10)
			pods = append(pods, pod(i, map[string]string{"batch.kubernetes.io/job-completion-index": idx}, map[string]string{"batch.kubernetes.io/job-completion-index": idx}))
		}
	case "LeaderWorkerSet.leaderworkerset.x-k8s.io":
		if err := template("spec", "leaderWorkerTemplate", "workerTemplate"); err != nil {
			return nil, err
		}
		size := count("spec", "leaderWorkerTemplate", "size")
		// Group 0 of the set; the other groups differ only in the index.
		for i := range size {
			pods = append(pods, pod(i, map[string]string{
				"leaderworkerset.sigs.k8s.io/name":         name,
				"leaderworkerset.sigs.k8s.io/group-index":  "0",
				"leaderworkerset.sigs.k8s.io/worker-index": strconv.FormatInt(i, 10),
			}, map[string]string{"leaderworkerset.sigs.k8s.io/size": strconv.FormatInt(size, 10)}))
		}
	case "Pod":
		var p corev1.Pod
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &p); err != nil {
			return nil, err
		}
		pods = append(pods, &p)
	}
	return pods, nil
}

func merge(dst, src map[string]string) map[string]string {
	if dst == nil {
		dst = map[string]string{}
	}
	for k, v := range src {
		dst[k] = v
	}
	return dst
}
