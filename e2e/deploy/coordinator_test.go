package deploy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/util/retry"
	spv1alpha1 "sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1"
	spclientset "sigs.k8s.io/scheduler-plugins/pkg/generated/clientset/versioned"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/coordinator/testcoord"
	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/podapi"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
	"github.com/muster-dev/muster/test/podbuilder"
)

// coordinatorRunsChartArgs runs the coordinator built from this tree with
// the chart's arguments, changed only where a pod differs from this
// machine: loopback addresses for the pod's wildcard ones, a kubeconfig of
// the chart's ServiceAccount for --in-cluster, an etcd run with the
// chart's etcd TLS for $(ETCD_ENDPOINTS), and for each of the
// container's mounts a directory holding what the chart mounts there
// (its Secrets and ConfigMaps). Then it asks what the chart's probes ask,
// calls the webhook as the apiserver would through the Service, dials the
// gRPC port as an injected agent would (TLS verified with the CA the
// webhook injected, for the advertised name), and makes the coordinator
// use each permission the chart grants it: a PodGroup read by the
// webhook, a pod's token reviewed and the pod read when it joins, a pod's
// group-ready condition patched by podready, a person's read and restart
// of groups asked of RBAC, the cluster's client CA read (kube-system), and
// ConfigMap muster-coordinator written for kubectl muster.
func coordinatorRunsChartArgs(t *testing.T, c *cluster.Cluster, a *applier) {
	objs := render(t, nil)
	kubeconfig := asComponent(t, c, a, objs, "coordinator")
	deployment := find(t, objs, "Deployment", "muster-coordinator")
	mounts := materializeMounts(t, objs, deployment)
	etcdURL := startChartEtcd(t, objs)
	grpcAddr, webhookAddr, metricsAddr := testcoord.FreeAddr(t), testcoord.FreeAddr(t), testcoord.FreeAddr(t)
	replace := map[string]string{
		"--listen":         grpcAddr,
		"--webhook-listen": webhookAddr,
		"--metrics-listen": metricsAddr,
		"--etcd-endpoints": etcdURL,
	}
	var args []string
	advertise := ""
	for _, a := range containerArgs(t, deployment) {
		name, value, hasValue := strings.Cut(a, "=")
		switch v, ok := replace[name]; {
		case a == "--in-cluster":
			a = "--kubeconfig=" + kubeconfig
		case ok:
			a = name + "=" + v
		case hasValue:
			a = name + "=" + inMounts(mounts, value)
		}
		if name == "--advertise" {
			advertise = value
		}
		args = append(args, a)
	}
	if advertise == "" {
		t.Fatal("the chart's coordinator has no --advertise: injected agents would dial its --listen address, 0.0.0.0")
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
		// What the apiserver refused the coordinator in calls no check
		// above looked at (it logs them).
		if strings.Contains(p.output(), "forbidden") {
			t.Errorf("the coordinator, as the chart's ServiceAccount, was refused something:\n%s", p.output())
		}
	}()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format+"\n--- coordinator %s\n%s", append(args, strings.Join(p.cmd.Args[1:], " "), p.output())...)
	}

	// Readiness: the chart's probe, at the port it names.
	addrOf := map[string]string{"grpc": grpcAddr, "webhook": webhookAddr, "metrics": metricsAddr}
	probe := readinessProbe(t, deployment)
	if probe.HTTPGet == nil {
		fail("the coordinator's readiness probe is not an httpGet: the kubelet's grpc probe cannot speak TLS, which the gRPC port serves")
	}
	probeURL := "http://" + addrOf[probe.HTTPGet.Port.String()] + probe.HTTPGet.Path
	deadline := time.Now().Add(30 * time.Second)
	for {
		if done, err := p.exited(); done {
			fail("coordinator exited: %v", err)
		}
		resp, err := http.Get(probeURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			fail("readiness probe %s not ok after 30s: %v", probeURL, err)
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
	webhooks, _, _ := unstructured.NestedSlice(find(t, objs, "MutatingWebhookConfiguration", "muster").Object, "webhooks")
	caBundle, _, _ := unstructured.NestedString(webhooks[0].(map[string]any), "clientConfig", "caBundle")
	ca, err := base64.StdEncoding.DecodeString(caBundle)
	if err != nil {
		t.Fatalf("caBundle: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	tconn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", webhookAddr, &tls.Config{RootCAs: roots, ServerName: "muster-coordinator.muster.svc"})
	if err != nil {
		fail("TLS to the webhook as the apiserver would: %v", err)
	}
	tconn.Close()
	injected := webhookReadsPodGroup(t, c, webhookAddr, roots)
	conn := dialAsAgent(t, injected, advertise, grpcAddr)
	podJoins(t, c, conn)
	readersNeedRBAC(t, c, conn)
	operatorsNeedRBAC(t, c, conn)
	publishedForKubectl(t, c, advertise, injected)
	// The chart owns the webhook configuration: the coordinator must not
	// have registered one of its own.
	if _, err := c.Clientset().AdmissionregistrationV1().MutatingWebhookConfigurations().Get(t.Context(), "muster", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		fail("MutatingWebhookConfiguration muster exists (err %v): the coordinator registered itself though the chart owns it", err)
	}
}

// dialAsAgent connects to the coordinator's gRPC port as an agent the
// webhook injected: to the address in MUSTER_COORDINATOR (here at
// grpcAddr, where the coordinator listens on this machine), verifying the
// server with the PEM in MUSTER_COORDINATOR_CA. The health service
// answers over that connection, and not over plaintext: the port serves
// TLS only.
func dialAsAgent(t *testing.T, pod *corev1.Pod, advertise, grpcAddr string) *grpc.ClientConn {
	t.Helper()
	env := agentEnv(t, pod)
	if env["MUSTER_COORDINATOR"] != advertise {
		t.Fatalf("the webhook injected MUSTER_COORDINATOR=%q, want the chart's --advertise %q", env["MUSTER_COORDINATOR"], advertise)
	}
	caPEM := env["MUSTER_COORDINATOR_CA"]
	if caPEM == "" {
		t.Fatal("the webhook injected no MUSTER_COORDINATOR_CA: agents could not verify the coordinator's TLS (the chart's --agent-ca)")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(caPEM)) {
		t.Fatalf("MUSTER_COORDINATOR_CA holds no PEM certificate:\n%s", caPEM)
	}
	host, _, err := net.SplitHostPort(advertise)
	if err != nil {
		t.Fatal(err)
	}
	// The agent's gRPC client verifies the name it dials, the advertised
	// host; this test dials the same certificate at a loopback port.
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: host}
	raw, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", grpcAddr, tc)
	if err != nil {
		t.Fatalf("TLS to the gRPC port for %s with the injected CA: %v", host, err)
	}
	raw.Close()
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health over TLS verified with the injected CA: %v %v", resp, err)
	}
	plain, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	pctx, pcancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer pcancel()
	if _, err := healthpb.NewHealthClient(plain).Check(pctx, &healthpb.HealthCheckRequest{}); err == nil {
		t.Fatal("the gRPC port answered plaintext: the chart's coordinator serves without TLS")
	}
	return conn
}

// agentEnv is the env the webhook gave the pod's containers.
func agentEnv(t *testing.T, pod *corev1.Pod) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, c := range pod.Spec.Containers {
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, "MUSTER_") {
				env[e.Name] = e.Value
			}
		}
	}
	return env
}

// bearer sends a token with every call, as the agent does with its
// projected token.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

// serviceAccount makes ServiceAccount name in the release's namespace.
func serviceAccount(t *testing.T, c *cluster.Cluster, name string) {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.Clientset().CoreV1().ServiceAccounts(release.Namespace).Create(t.Context(), sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// token returns a token of ServiceAccount sa with muster's audience,
// bound to pod when it is not nil (the kubelet's projected token).
func token(t *testing.T, c *cluster.Cluster, sa string, pod *corev1.Pod) bearer {
	t.Helper()
	ctx := t.Context()
	serviceAccount(t, c, sa)
	spec := authenticationv1.TokenRequestSpec{Audiences: []string{auth.DefaultAudience}}
	if pod != nil {
		spec.BoundObjectRef = &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}
	}
	tr, err := c.Clientset().CoreV1().ServiceAccounts(release.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token of ServiceAccount %s: %v", sa, err)
	}
	return bearer(tr.Status.Token)
}

// webhookReadsPodGroup sends the webhook a pod that names a
// scheduler-plugins PodGroup, whose minMember the webhook must read to
// learn the group's size, and returns the pod as the webhook patched it.
func webhookReadsPodGroup(t *testing.T, c *cluster.Cluster, addr string, roots *x509.CertPool) *corev1.Pod {
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
	pod := podbuilder.MakePod().Namespace(release.Namespace).Name("pg-0").PodGroup("pg").Inject().
		Container("m", "x").Command("sleep", "1").Obj()
	pod.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
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
		t.Fatalf("the webhook, as the chart's ServiceAccount, refused a pod of PodGroup pg: %v", out.Response.Result)
	}
	patch, err := jsonpatch.DecodePatch(out.Response.Patch)
	if err != nil {
		t.Fatalf("the webhook's patch: %v", err)
	}
	patched, err := patch.Apply(raw)
	if err != nil {
		t.Fatalf("apply the webhook's patch: %v", err)
	}
	var injected corev1.Pod
	if err := json.Unmarshal(patched, &injected); err != nil {
		t.Fatal(err)
	}
	return &injected
}

// podJoins forms a group of one whose member is a real pod, calling as
// that pod: with a token bound to it, which the coordinator reviews
// (TokenReview) before reading the pod for its group label, uid and IP
// (get pods). Then it waits for the coordinator to set the pod's
// muster.dev/group-ready condition (patch pods/status).
func podJoins(t *testing.T, c *cluster.Cluster, conn *grpc.ClientConn) {
	t.Helper()
	ctx := t.Context()
	const ip = "10.244.0.2"
	pod := podbuilder.MakePod().Namespace(release.Namespace).Name("solo-0").Group("solo").ServiceAccount("solo").Container("m", "x").Obj()
	serviceAccount(t, c, "solo")
	pod, err := c.Clientset().CoreV1().Pods(release.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// No kubelet runs here: give the pod the IP one would. The scheduler
	// may write the pod's status first (PodScheduled: no nodes), so read
	// it again on a conflict.
	pods := c.Clientset().CoreV1().Pods(release.Namespace)
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status.PodIP, cur.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		pod, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	creds := grpc.PerRPCCredentials(token(t, c, "solo", pod))
	rc := musterv1.NewRendezvousClient(conn)
	g := &musterv1.GroupRef{Namespace: release.Namespace, Name: "solo"}
	joined, err := rc.Join(ctx, &musterv1.JoinRequest{Group: g, MemberId: pod.Name, Address: ip, Size: 1, MasterPort: 29500, Generation: -1}, creds)
	if err != nil {
		t.Fatalf("join as pod %s with its token: %v\n(the coordinator creates a TokenReview and gets the pod: the chart's ClusterRole must allow create tokenreviews.authentication.k8s.io and get pods)", pod.Name, err)
	}
	// The stream keeps the member alive while the test waits.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, err := rc.Watch(wctx, &musterv1.WatchRequest{Group: g, MemberId: pod.Name, Generation: joined.Generation}, creds); err != nil {
		t.Fatalf("watch: %v", err)
	}
	if _, err := rc.ReportStatus(ctx, &musterv1.ReportStatusRequest{Group: g, MemberId: pod.Name, Generation: joined.Generation, State: musterv1.RuntimeState_RUNTIME_STATE_READY}, creds); err != nil {
		t.Fatalf("report ready: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		p, err := c.Clientset().CoreV1().Pods(release.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == podapi.ConditionGroupReady && cond.Status == corev1.ConditionTrue {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s has no %s=True 20s after its group of one was ready: %+v", pod.Name, podapi.ConditionGroupReady, p.Status.Conditions)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// readersNeedRBAC reads groups as people would, with tokens for muster's
// audience that no pod holds: the coordinator asks RBAC with a
// SubjectAccessReview (which the chart must let it create) whether they
// may list groups.muster.dev. A ServiceAccount bound to nothing may not;
// one bound to the built-in view ClusterRole may in that namespace, once
// the chart's ClusterRole is aggregated into view, and still not in all
// namespaces.
func readersNeedRBAC(t *testing.T, c *cluster.Cluster, conn *grpc.ClientConn) {
	t.Helper()
	ctx := t.Context()
	rc := musterv1.NewRendezvousClient(conn)
	list := func(tok bearer, ns string) (*musterv1.ListGroupsResponse, error) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return rc.ListGroups(ctx, &musterv1.ListGroupsRequest{Namespace: ns}, grpc.PerRPCCredentials(tok))
	}
	stranger := token(t, c, "stranger", nil)
	if _, err := list(stranger, release.Namespace); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("ListGroups by a ServiceAccount RBAC grants nothing: %v, want PermissionDenied\n(Unavailable: the coordinator may not create subjectaccessreviews.authorization.k8s.io; the chart's ClusterRole must allow it)", err)
	}

	viewer := token(t, c, "viewer", nil)
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "viewer-view", Namespace: release.Namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "viewer", Namespace: release.Namespace}},
	}
	if _, err := c.Clientset().RbacV1().RoleBindings(release.Namespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// The controller-manager aggregates the chart's ClusterRole into view;
	// the coordinator caches each answer for a few seconds.
	deadline := time.Now().Add(45 * time.Second)
	for {
		resp, err := list(viewer, release.Namespace)
		if err == nil {
			found := false
			for _, g := range resp.Groups {
				found = found || g.GetRef().GetName() == "solo"
			}
			if !found {
				t.Fatalf("ListGroups in %s by a viewer: %v, want group solo among them", release.Namespace, resp.Groups)
			}
			break
		}
		if time.Now().After(deadline) {
			view, verr := c.Clientset().RbacV1().ClusterRoles().Get(ctx, "view", metav1.GetOptions{})
			t.Fatalf("ListGroups in %s by a ServiceAccount bound to view: %v 45s on\n(the chart's ClusterRole for get/list/watch groups.muster.dev must carry rbac.authorization.k8s.io/aggregate-to-view: \"true\"; view's rules: %v %v)", release.Namespace, err, view.Rules, verr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := list(viewer, ""); status.Code(err) != codes.PermissionDenied {
		t.Errorf("ListGroups in all namespaces by a viewer of %s only: %v, want PermissionDenied", release.Namespace, err)
	}
}

// operatorsNeedRBAC restarts a group as people would: a ServiceAccount
// bound to view may not (RBAC create on groups/restart, which the chart's
// group-operator ClusterRole grants to edit and admin); one bound to edit
// may, with its token for the apiserver's own audience (kubectl's
// credentials), once the controller-manager aggregated the ClusterRole.
func operatorsNeedRBAC(t *testing.T, c *cluster.Cluster, conn *grpc.ClientConn) {
	t.Helper()
	ctx := t.Context()
	rc := musterv1.NewRendezvousClient(conn)
	g := &musterv1.GroupRef{Namespace: release.Namespace, Name: "solo"}
	restart := func(tok bearer) (*musterv1.Group, error) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return rc.RestartGroup(ctx, &musterv1.RestartGroupRequest{Group: g, Reason: "chart test"}, grpc.PerRPCCredentials(tok))
	}
	viewer := token(t, c, "viewer", nil) // bound to view by readersNeedRBAC
	if _, err := restart(viewer); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "groups/restart") {
		t.Fatalf("RestartGroup by a viewer: %v, want PermissionDenied naming groups/restart", err)
	}
	serviceAccount(t, c, "editor")
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "editor-edit", Namespace: release.Namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "edit"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "editor", Namespace: release.Namespace}},
	}
	if _, err := c.Clientset().RbacV1().RoleBindings(release.Namespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// No audience: the apiserver's own, as kubectl's token.
	tr, err := c.Clientset().CoreV1().ServiceAccounts(release.Namespace).CreateToken(ctx, "editor", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	editor := bearer(tr.Status.Token)
	deadline := time.Now().Add(45 * time.Second)
	for {
		got, err := restart(editor)
		if err == nil {
			h := got.GetHistory()
			want := "restarted by user system:serviceaccount:" + release.Namespace + ":editor: chart test"
			if len(h) == 0 || h[len(h)-1].GetEndReason() != want {
				t.Fatalf("restarted group's history %v, want the last generation ended %q", h, want)
			}
			return
		}
		if time.Now().After(deadline) {
			edit, eerr := c.Clientset().RbacV1().ClusterRoles().Get(ctx, "edit", metav1.GetOptions{})
			t.Fatalf("RestartGroup by a ServiceAccount bound to edit, with a token for the apiserver: %v 45s on\n(the chart's ClusterRole for create groups/restart must carry rbac.authorization.k8s.io/aggregate-to-edit: \"true\"; edit's rules: %v %v)", err, edit.Rules, eerr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// publishedForKubectl: the coordinator, as the chart's ServiceAccount, wrote
// ConfigMap muster-coordinator in its namespace with the address and CA
// injected agents get, and every authenticated user may read it.
func publishedForKubectl(t *testing.T, c *cluster.Cluster, advertise string, injected *corev1.Pod) {
	t.Helper()
	ctx := t.Context()
	var cm *corev1.ConfigMap
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		cm, err = c.Clientset().CoreV1().ConfigMaps(release.Namespace).Get(ctx, podapi.CoordinatorConfigMap, metav1.GetOptions{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ConfigMap %s/%s: %v\n(the coordinator's --publish-namespace, and the chart's Role letting it create configmaps)", release.Namespace, podapi.CoordinatorConfigMap, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	env := agentEnv(t, injected)
	if cm.Data[podapi.CoordinatorAddressKey] != advertise || cm.Data[podapi.CoordinatorCAKey] != env["MUSTER_COORDINATOR_CA"] {
		t.Errorf("published %v, want address %q and the CA injected agents get", cm.Data, advertise)
	}
	stranger := token(t, c, "stranger", nil)
	review := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: string(stranger), Audiences: []string{auth.DefaultAudience}}}
	tr, err := c.Clientset().AuthenticationV1().TokenReviews().Create(ctx, review, metav1.CreateOptions{})
	if err != nil || !tr.Status.Authenticated {
		t.Fatalf("review the stranger's token: %v %+v", err, tr.Status)
	}
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{User: tr.Status.User.Username, Groups: tr.Status.User.Groups,
		ResourceAttributes: &authzv1.ResourceAttributes{Namespace: release.Namespace, Verb: "get", Resource: "configmaps", Name: podapi.CoordinatorConfigMap}}}
	got, err := c.Clientset().AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil || !got.Status.Allowed {
		t.Errorf("a ServiceAccount RBAC grants nothing may not get ConfigMap %s: %v %+v (the chart's discovery Role for system:authenticated)", podapi.CoordinatorConfigMap, err, got.Status)
	}
}
