package webhook

// Integration test: Register and Serve against a real kube-apiserver 1.37
// (e2e/cluster), which calls the webhook over TLS, applies its patch and
// stores the pod.

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	spv1alpha1 "sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1"
	spclientset "sigs.k8s.io/scheduler-plugins/pkg/generated/clientset/versioned"

	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/test/clustertest"
	"github.com/muster-dev/muster/test/podbuilder"
)

// injected is a pod that asks for the agent, with one container to wrap;
// the caller names its group.
func injected(name string) *podbuilder.PodWrapper {
	return podbuilder.MakePod().Name(name).Inject().Container("model", "example.com/model").Command("python3", "serve.py").Args("--port", "8000")
}

func TestAgainstAPIServer(t *testing.T) {
	c := clustertest.New(t, nil)
	cs := c.Clientset()
	ns := clustertest.Namespace(t, c)
	ctx := t.Context()

	caPEM, certFile, keyFile, err := EnsureCerts(t.TempDir(), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.SizeLookup = PodGroupSizes(spclientset.NewForConfigOrDie(c.RESTConfig()))
	h := NewHandler(cfg, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	serveCtx, stopServing := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- ServeListener(serveCtx, ln, certFile, keyFile, h) }()
	stop := sync.OnceValue(func() error { stopServing(); return <-served })
	t.Cleanup(func() { stop() })

	url := "https://" + ln.Addr().String() + "/mutate"
	// The second call updates what the first created.
	for range 2 {
		if err := Register(ctx, cs, "muster-test", url, caPEM); err != nil {
			t.Fatal(err)
		}
	}
	mwc, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "muster-test", metav1.GetOptions{})
	if err != nil || len(mwc.Webhooks) != 1 || *mwc.Webhooks[0].ClientConfig.URL != url {
		t.Fatalf("registered configuration %+v, %v: want one webhook at %s", mwc, err, url)
	}

	waitForServiceAccount(t, cs, ns)
	// The apiserver picks up webhook configurations from an informer: dry
	// runs until the webhook answers (sideEffects None allows dry runs).
	waitFor(t, "the webhook to mutate pods", func() (bool, string) {
		p, err := cs.CoreV1().Pods(ns).Create(ctx, injected("probe").Group("probe").Size(1).Obj(),
			metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, err.Error()
		}
		return p.Annotations[podapi.AnnotationInjected] == "true", "pod not mutated yet"
	})

	t.Run("injected pod is stored mutated", func(t *testing.T) {
		in := injected("llama-0").Group("llama").PodIndex(0).Size(1).Runtime("torchrun").Port(8000).Obj()
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, in, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pod, err := cs.CoreV1().Pods(ns).Get(ctx, "llama-0", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		spec := pod.Spec
		main := spec.Containers[0]
		if got, want := main.Command, []string{AgentPath, "run", "--", "python3", "serve.py", "--port", "8000"}; !slices.Equal(got, want) || len(main.Args) != 0 {
			t.Errorf("command %q args %q, want %q and no args", got, main.Args, want)
		}
		if len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != InitContainerName || spec.InitContainers[0].Image != cfg.AgentImage {
			t.Errorf("init containers %+v: want %s only", spec.InitContainers, InitContainerName)
		}
		if spec.SchedulerName != cfg.SchedulerName || pod.Annotations[podapi.AnnotationInjected] != "true" ||
			!slices.Contains(spec.ReadinessGates, corev1.PodReadinessGate{ConditionType: podapi.ConditionGroupReady}) {
			t.Errorf("schedulerName %q, annotations %v, readiness gates %v", spec.SchedulerName, pod.Annotations, spec.ReadinessGates)
		}
		env := map[string]corev1.EnvVar{}
		for _, e := range main.Env {
			env[e.Name] = e
		}
		for name, want := range map[string]string{"MUSTER_GROUP": "llama", "MUSTER_SIZE": "1", "MUSTER_ORDINAL": "0", "MUSTER_RUNTIME": "torchrun", "MUSTER_PORT": "8000", "MUSTER_ENDPOINT_PORT": "8080", "MUSTER_COORDINATOR": cfg.CoordinatorAddress} {
			if env[name].Value != want {
				t.Errorf("env %s = %q, want %q", name, env[name].Value, want)
			}
		}
		if e := env["MUSTER_ADDRESS"]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "status.podIP" {
			t.Errorf("MUSTER_ADDRESS = %+v, want the downward API's status.podIP", e)
		}
		// The apiserver took the projected token volume as it is.
		checkIdentity(t, cfg, pod)

		// The stored pod, as the apiserver defaulted it, needs nothing more:
		// what a reinvocation would see.
		raw, _ := json.Marshal(pod)
		resp := testHandler(cfg).admit(ctx, &admissionv1.AdmissionRequest{Kind: podKind, Operation: admissionv1.Create, Namespace: ns, Object: rawObject(raw)})
		if !resp.Allowed || resp.Patch != nil {
			t.Errorf("second pass over the stored pod: allowed %v, patch %s", resp.Allowed, resp.Patch)
		}
	})

	t.Run("size from a PodGroup", func(t *testing.T) {
		sp := spclientset.NewForConfigOrDie(c.RESTConfig())
		pg := &spv1alpha1.PodGroup{ObjectMeta: metav1.ObjectMeta{Name: "vllm-0"}, Spec: spv1alpha1.PodGroupSpec{MinMember: 3}}
		if _, err := sp.SchedulingV1alpha1().PodGroups(ns).Create(ctx, pg, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pod, err := cs.CoreV1().Pods(ns).Create(ctx, injected("vllm-0-0").PodGroup("vllm-0").Obj(), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if i := slices.IndexFunc(pod.Spec.Containers[0].Env, func(e corev1.EnvVar) bool { return e.Name == "MUSTER_SIZE" }); i < 0 || pod.Spec.Containers[0].Env[i].Value != "3" {
			t.Errorf("env %+v: want MUSTER_SIZE=3 from the PodGroup's minMember", pod.Spec.Containers[0].Env)
		}
		_, err = cs.CoreV1().Pods(ns).Create(ctx, injected("orphan").PodGroup("nope").Obj(), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), `no PodGroup "nope"`) {
			t.Errorf("pod of a missing PodGroup: err = %v, want a denial naming it", err)
		}
	})

	t.Run("invalid pod is denied with the field path", func(t *testing.T) {
		_, err := cs.CoreV1().Pods(ns).Create(ctx, injected("bad").Group("g").Annotation(podapi.AnnotationSize, "two").Obj(), metav1.CreateOptions{})
		want := `metadata.annotations[muster.dev/size]: Invalid value: "two": must be a positive whole number (the number of pods in the group)`
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v; want Invalid with %q", err, want)
		}
	})

	plain := func(name string) *corev1.Pod {
		return podbuilder.MakePod().Name(name).Container("c", "example.com/c").Obj()
	}
	t.Run("pod without the annotation is untouched", func(t *testing.T) {
		pod, err := cs.CoreV1().Pods(ns).Create(ctx, plain("plain"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if pod.Spec.SchedulerName != corev1.DefaultSchedulerName || len(pod.Spec.InitContainers) > 0 || pod.Annotations[podapi.AnnotationInjected] != "" {
			t.Errorf("plain pod was mutated: %+v", pod.Spec)
		}
	})

	// failurePolicy Fail with the match condition: while the webhook is
	// down, annotated pods are refused and every other pod is created.
	t.Run("webhook down", func(t *testing.T) {
		if err := stop(); err != nil {
			t.Fatalf("Serve: %v", err)
		}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, plain("plain-while-down"), metav1.CreateOptions{}); err != nil {
			t.Errorf("plain pod while the webhook is down: %v", err)
		}
		_, err := cs.CoreV1().Pods(ns).Create(ctx, injected("llama-down").Group("llama").Size(1).Obj(), metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), WebhookName) {
			t.Errorf("annotated pod while the webhook is down: err = %v, want a failure naming %s", err, WebhookName)
		}
	})
}

func rawObject(raw []byte) runtime.RawExtension { return runtime.RawExtension{Raw: raw} }

func waitForServiceAccount(t *testing.T, cs kubernetes.Interface, ns string) {
	t.Helper()
	// kcm creates it; until then the ServiceAccount admission plugin
	// refuses every pod in the namespace.
	waitFor(t, "ServiceAccount default in "+ns, func() (bool, string) {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(t.Context(), "default", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		ok, status := cond()
		last = status
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v (last: %s)", what, err, last)
	}
}

// testWriter sends the handler's log lines to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
