package security

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/muster-dev/muster/e2e/e2etest"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
	"github.com/muster-dev/muster/test/clustertest"
	"github.com/muster-dev/muster/test/podbuilder"
)

func TestMain(m *testing.M) { clustertest.Main(m) }

// bearer is a per-call token, as the agent sends its projected one.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

// dialToken connects to the coordinator, verifying it with caPEM, sending
// token with every call ("" sends none).
func dialToken(t *testing.T, addr string, caPEM []byte, token string) musterv1.RendezvousClient {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA in MUSTER_COORDINATOR_CA")
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return musterv1.NewRendezvousClient(conn)
}

// podToken is the token a pod's projected volume would hold: service
// account default, audience aud, bound to the pod.
func podToken(t *testing.T, cs kubernetes.Interface, p *v1.Pod, aud string) string {
	t.Helper()
	exp := int64(600)
	tr, err := cs.CoreV1().ServiceAccounts(p.Namespace).CreateToken(context.Background(), "default", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{aud}, ExpirationSeconds: &exp,
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	return tr.Status.Token
}

// sleeper creates a pod muster does not inject and waits until it runs.
func sleeper(t *testing.T, cs kubernetes.Interface, ns, name string) *v1.Pod {
	t.Helper()
	p, err := cs.CoreV1().Pods(ns).Create(context.Background(),
		podbuilder.MakePod().Namespace(ns).Name(name).Container("c", "busybox").Command("sleep", "3600").Obj(), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err = cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == v1.PodRunning, nil
	}); err != nil {
		t.Fatalf("pod %s/%s not running: %v", ns, name, err)
	}
	return p
}

func TestOutsidersCannotTakeOverAGroupOnKubernetes(t *testing.T) {
	root, err := clustertest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	c := e2etest.ProcessCluster(t, root)
	cs := c.Clientset()
	ns := clustertest.Namespace(t, c)
	other := clustertest.Namespace(t, c)

	// The victim: three pods of group "web", rank 0 serving on 9000
	// behind each pod's endpoint (8080).
	server := `import http.server, os
if os.environ["RANK"] != "0":
    import time; time.sleep(3600)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = b"ok"
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
http.server.HTTPServer((os.environ["MUSTER_ADDRESS"], 9000), H).serve_forever()`
	ids := []string{"web-0", "web-1", "web-2"}
	for _, id := range ids {
		pod := podbuilder.MakePod().Namespace(ns).Name(id).Group("web").Label("app", "web").
			Inject().Size(3).Port(9000).Container("web", "python:3.11-slim").Command("python3", "-c", server).Obj()
		if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var pods []v1.Pod
	if err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, nil
		}
		pods = list.Items
		ready := 0
		for i := range pods {
			if e2etest.PodReady(&pods[i]) {
				ready++
			}
		}
		return ready == 3, nil
	}); err != nil {
		for _, p := range pods {
			logs, _ := cs.CoreV1().Pods(ns).GetLogs(p.Name, &v1.PodLogOptions{Container: "web"}).DoRaw(context.Background())
			t.Logf("%s: %s\n%s", p.Name, e2etest.Conditions(&p), e2etest.Tail(string(logs), 15))
		}
		t.Fatalf("victim group not Ready: %v", err)
	}
	// The CA agents verify the coordinator with is in every injected pod.
	var caPEM []byte
	for _, e := range pods[0].Spec.Containers[0].Env {
		if e.Name == "MUSTER_COORDINATOR_CA" {
			caPEM = []byte(e.Value)
		}
	}
	if len(caPEM) == 0 {
		t.Fatal("the webhook injected no MUSTER_COORDINATOR_CA: agents would dial the coordinator in plaintext")
	}
	addr := c.CoordinatorAddr()

	// An operator: a service account (not a pod) granted get/list on
	// groups.muster.dev, as the chart's reader role does.
	if _, err := cs.CoreV1().ServiceAccounts(other).Create(context.Background(), &v1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "oncall"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(context.Background(), &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "muster-test-group-reader-" + other},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"muster.dev"}, Resources: []string{"groups"}, Verbs: []string{"get", "list", "watch"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(context.Background(), &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "oncall"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "muster-test-group-reader-" + other},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "oncall", Namespace: other}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	exp := int64(600)
	tr, err := cs.CoreV1().ServiceAccounts(other).CreateToken(context.Background(), "oncall", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{"muster"}, ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	op := dialToken(t, addr, caPEM, tr.Status.Token)
	victim := &musterv1.GroupRef{Namespace: ns, Name: "web"}
	g, err := op.GetGroup(context.Background(), &musterv1.GetGroupRequest{Group: victim})
	if err != nil || !g.GetReady() {
		t.Fatalf("the operator (RBAC get on groups.muster.dev in %s) cannot read the victim: %v %v", ns, g, err)
	}
	if _, err := op.ListGroups(context.Background(), &musterv1.ListGroupsRequest{}); codeOf(err) != codes.PermissionDenied {
		t.Errorf("an operator granted %s only listed all namespaces: %v", ns, err)
	}

	// The outsiders: pods with their own valid tokens.
	intruder := sleeper(t, cs, other, "intruder")
	neighbour := sleeper(t, cs, ns, "neighbour")
	reached := listenTrap(t, "127.0.0.99")
	plain, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	callers := []caller{
		{"no credentials", dialToken(t, addr, caPEM, ""), codes.Unauthenticated},
		// A pod's token for the apiserver names its service account as a
		// user (as kubectl's token would), never a member: what RBAC
		// grants it, here nothing.
		{"a pod's token for the apiserver: a user, not a member", dialToken(t, addr, caPEM, podToken(t, cs, neighbour, "https://kubernetes.default.svc.cluster.local")), codes.PermissionDenied},
		{"a pod of another namespace", dialToken(t, addr, caPEM, podToken(t, cs, intruder, "muster")), codes.PermissionDenied},
		{"a pod of the namespace outside the group", dialToken(t, addr, caPEM, podToken(t, cs, neighbour, "muster")), codes.PermissionDenied},
	}
	runAttacks(t, callers, victim, ids, "127.0.0.99", plain)

	victimUntouched(t, op, victim, "127.0.0.99")
	for _, p := range pods {
		resp, err := http.Get("http://" + net.JoinHostPort(p.Status.PodIP, "8080") + "/")
		if err != nil {
			t.Fatalf("%s endpoint: %v", p.Name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "ok" {
			t.Errorf("%s endpoint after the attacks: %d %q", p.Name, resp.StatusCode, b)
		}
	}
	if n := reached.Load(); n > 0 {
		t.Fatalf("the attacker's listener got %d connections", n)
	}
	t.Logf("victim %s/web: generation 0, Ready, %d members answering", ns, len(pods))
}

func codeOf(err error) codes.Code { return status.Code(err) }
