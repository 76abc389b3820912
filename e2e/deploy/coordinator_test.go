package deploy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	spv1alpha1 "sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1"
	spclientset "sigs.k8s.io/scheduler-plugins/pkg/generated/clientset/versioned"

	"github.com/muster-dev/muster/coordinator/podready"
	"github.com/muster-dev/muster/coordinator/testcoord"
	"github.com/muster-dev/muster/coordinator/webhook"
	"github.com/muster-dev/muster/e2e/cluster"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// coordinatorRunsChartArgs runs the coordinator built from this tree with
// the chart's arguments, changed only where a pod differs from this
// machine: loopback addresses for the pod's wildcard ones, a kubeconfig of
// the chart's ServiceAccount for --in-cluster, the cluster's etcd for
// $(ETCD_ENDPOINTS), and a directory holding the chart's webhook Secret
// for its mount. Then it asks what the chart's probes ask, calls the
// webhook as the apiserver would through the Service, and makes the
// coordinator use each permission the chart grants it: a PodGroup read by
// the webhook, a pod's group-ready condition patched by podready.
func coordinatorRunsChartArgs(t *testing.T, c *cluster.Cluster, a *applier) {
	objs := render(t, nil)
	kubeconfig := asComponent(t, c, a, objs, "coordinator")
	tlsDir := t.TempDir()
	secret := find(t, objs, "Secret", "muster-webhook-tls")
	for _, key := range []string{"tls.crt", "tls.key", "ca.crt"} {
		s, _, _ := unstructured.NestedString(secret.Object, "data", key)
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tlsDir, key), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	grpcAddr, webhookAddr, metricsAddr := testcoord.FreeAddr(t), testcoord.FreeAddr(t), testcoord.FreeAddr(t)
	replace := map[string]string{
		"--listen":          grpcAddr,
		"--webhook-listen":  webhookAddr,
		"--metrics-listen":  metricsAddr,
		"--webhook-tls-dir": tlsDir,
		"--data-dir":        t.TempDir(),
		"--etcd-endpoints":  c.EtcdURL(),
	}
	var args []string
	for _, a := range containerArgs(t, find(t, objs, "Deployment", "muster-coordinator")) {
		name, _, _ := strings.Cut(a, "=")
		switch v, ok := replace[name]; {
		case a == "--in-cluster":
			a = "--kubeconfig=" + kubeconfig
		case ok:
			a = name + "=" + v
		}
		args = append(args, a)
	}

	bin := filepath.Join(t.TempDir(), "coordinator")
	build := exec.Command("go", "build", "-o", bin, "./coordinator/cmd/coordinator")
	build.Dir = repoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the coordinator: %v\n%s", err, out)
	}
	p := startProc(t, "coordinator", bin, args...)
	defer func() {
		if err := p.stop(); err != nil {
			t.Errorf("coordinator did not stop cleanly on SIGTERM: %v\n%s", err, p.output())
		}
	}()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format+"\n--- coordinator %s\n%s", append(args, strings.Join(p.cmd.Args[1:], " "), p.output())...)
	}

	// Readiness: the chart's grpc probe.
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if done, err := p.exited(); done {
			fail("coordinator exited: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if time.Now().After(deadline) {
			fail("grpc health not SERVING after 30s: %v %v", resp, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Liveness and metrics: the chart's httpGet probe and scrape port.
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			fail("GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			fail("GET %s = %d, want 200", path, resp.StatusCode)
		}
	}
	// The webhook, as the apiserver calls it through the Service: TLS
	// verified against the configuration's caBundle for the Service's name.
	ca, err := os.ReadFile(filepath.Join(tlsDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	tconn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", webhookAddr, &tls.Config{RootCAs: roots, ServerName: "muster-coordinator.muster.svc"})
	if err != nil {
		fail("TLS to the webhook as the apiserver would: %v", err)
	}
	tconn.Close()
	webhookReadsPodGroup(t, c, webhookAddr, roots)
	podreadyPatchesPod(t, c, conn)
	// The chart owns the webhook configuration: the coordinator must not
	// have registered one of its own.
	if _, err := c.Clientset().AdmissionregistrationV1().MutatingWebhookConfigurations().Get(t.Context(), "muster", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		fail("MutatingWebhookConfiguration muster exists (err %v): the coordinator registered itself though the chart owns it", err)
	}
}

// webhookReadsPodGroup sends the webhook a pod that names a
// scheduler-plugins PodGroup, whose minMember the webhook must read to
// learn the group's size.
func webhookReadsPodGroup(t *testing.T, c *cluster.Cluster, addr string, roots *x509.CertPool) {
	t.Helper()
	ctx := t.Context()
	pg := &spv1alpha1.PodGroup{ObjectMeta: metav1.ObjectMeta{Name: "pg", Namespace: release.Namespace}, Spec: spv1alpha1.PodGroupSpec{MinMember: 2}}
	sp, err := spclientset.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sp.SchedulingV1alpha1().PodGroups(release.Namespace).Create(ctx, pg, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{
			Name: "pg-0", Namespace: release.Namespace,
			Labels:      map[string]string{"scheduling.x-k8s.io/pod-group": "pg"},
			Annotations: map[string]string{webhook.AnnotationInject: "true"},
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "m", Image: "x", Command: []string{"sleep", "1"}}}},
	}
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       "1",
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: release.Namespace, Name: pod.Name, Operation: admissionv1.Create,
			Object: runtime.RawExtension{Raw: raw},
		},
	}
	body, err := json.Marshal(review)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "muster-coordinator.muster.svc"}}}
	resp, err := client.Post("https://"+addr+"/mutate", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Response == nil {
		t.Fatalf("webhook answer: %v (status %d)", err, resp.StatusCode)
	}
	if !out.Response.Allowed {
		t.Errorf("the webhook, as the chart's ServiceAccount, refused a pod of PodGroup pg: %v", out.Response.Result)
	}
}

// podreadyPatchesPod forms a group of one whose member is a real pod and
// waits for the coordinator to set the pod's muster.dev/group-ready
// condition.
func podreadyPatchesPod(t *testing.T, c *cluster.Cluster, conn *grpc.ClientConn) {
	t.Helper()
	ctx := t.Context()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "solo-0", Namespace: release.Namespace},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "m", Image: "x"}}},
	}
	if _, err := c.Clientset().CoreV1().Pods(release.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rc := musterv1.NewRendezvousClient(conn)
	g := &musterv1.GroupRef{Namespace: release.Namespace, Name: "solo"}
	joined, err := rc.Join(ctx, &musterv1.JoinRequest{Group: g, MemberId: pod.Name, Address: "10.244.0.2", Size: 1, MasterPort: 29500, Generation: -1})
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	// The stream keeps the member alive while the test waits.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, err := rc.Watch(wctx, &musterv1.WatchRequest{Group: g, MemberId: pod.Name, Generation: joined.Generation}); err != nil {
		t.Fatalf("watch: %v", err)
	}
	if _, err := rc.ReportStatus(ctx, &musterv1.ReportStatusRequest{Group: g, MemberId: pod.Name, Generation: joined.Generation, State: musterv1.RuntimeState_RUNTIME_STATE_READY}); err != nil {
		t.Fatalf("report ready: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		p, err := c.Clientset().CoreV1().Pods(release.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == podready.ConditionType && cond.Status == corev1.ConditionTrue {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s has no %s=True 20s after its group of one was ready: %+v", pod.Name, podready.ConditionType, p.Status.Conditions)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
