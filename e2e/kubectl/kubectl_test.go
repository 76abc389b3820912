// Package kubectl tests the kubectl plugin (kubectl muster) on the local
// control plane: a real group of 4 pods (the tensor-parallel model),
// read, logged and restarted through `kubectl muster` as kubectl runs
// plugins, as the cluster's admin (a client certificate) and as users
// with fewer rights (a token; a certificate).
package kubectl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/e2e/e2etest"
	kubectlmuster "github.com/muster-dev/muster/kubectl-muster"
	"github.com/muster-dev/muster/pki"
	"github.com/muster-dev/muster/test/clustertest"
)

func TestMain(m *testing.M) { clustertest.Main(m) }

// plugin runs `kubectl muster ARGS` with kubeconfig, the plugin found on
// PATH as kubectl finds plugins.
type plugin struct {
	kubectl, path, kubeconfig string
}

func (p plugin) cmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, p.kubectl, append([]string{"muster", "--kubeconfig", p.kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+p.path+string(os.PathListSeparator)+os.Getenv("PATH"))
	return cmd
}

func (p plugin) run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var o, e bytes.Buffer
	cmd := p.cmd(ctx, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func (p plugin) ok(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := p.run(t, args...)
	if err != nil {
		t.Fatalf("kubectl muster %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func TestKubectlMuster(t *testing.T) {
	e2etest.TorchPython(t)
	root, err := clustertest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	c := e2etest.ProcessCluster(t, root)
	cs := c.Clientset()
	ns := clustertest.Namespace(t, c)
	e2etest.CreateExample(t, c, ns, root, "tp-model.yaml")
	pods := waitReady(t, cs, ns, 4)
	admin := plugin{kubectl: filepath.Join(clustertest.Bins(t), "kubectl"), path: e2etest.MusterBins(t, root), kubeconfig: c.Kubeconfig()}

	t.Run("GetGroups", func(t *testing.T) {
		out := admin.ok(t, "get", "groups", "-A")
		want := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(ns) + `\s+tp-model\s+Running\s+0\s+4/4\s+0\s+tp-model-0\s+\d+[smh]\s*$`)
		if !strings.HasPrefix(out, "NAMESPACE") || !want.MatchString(out) {
			t.Errorf("get groups -A:\n%s\nwant a row %s", out, want)
		}
		t.Logf("kubectl muster get groups -A\n%s", out)
	})

	t.Run("DescribeGroup", func(t *testing.T) {
		out := admin.ok(t, "describe", "group", "tp-model", "-n", ns)
		t.Logf("kubectl muster describe group tp-model\n%s", out)
		for _, w := range []string{`Phase:\s+Running, 4/4 ranks ready`, `Generation:\s+0\n`, `Leader:\s+tp-model-0 \(`, `History:\s+<none>`} {
			if !regexp.MustCompile(w).MatchString(out) {
				t.Errorf("describe lacks %s", w)
			}
		}
		for i := range 4 {
			name := fmt.Sprintf("tp-model-%d", i)
			p := pods[name]
			row := regexp.MustCompile(fmt.Sprintf(`(?m)^  %d\s+%s\s+%s\s+\S+\s+Ready\s+%s\s+0$`, i, name, regexp.QuoteMeta(p.Spec.NodeName), regexp.QuoteMeta(p.Status.PodIP)))
			if !row.MatchString(out) {
				t.Errorf("describe: no member row %s", row)
			}
		}
		var g kubectlmuster.Group
		if err := json.Unmarshal([]byte(admin.ok(t, "describe", "group", "tp-model", "-n", ns, "-o", "json")), &g); err != nil {
			t.Fatal(err)
		}
		cur := g.Current
		if cur == nil || cur.PodsCreated == nil || cur.Bound == nil || cur.Started == nil || cur.Joined == nil || cur.Released == nil || cur.ReadyAt == nil {
			t.Fatalf("describe -o json: a phase time is missing: %+v", cur)
		}
		// Kubernetes' times have whole seconds; muster's milliseconds.
		order := []*time.Time{cur.PodsCreated, cur.Bound, cur.Started, cur.Joined, cur.Released, cur.ReadyAt}
		for i := 1; i < len(order); i++ {
			if order[i].Before(order[i-1].Truncate(time.Second)) {
				t.Errorf("phase %d at %s is before phase %d at %s", i, order[i], i-1, order[i-1])
			}
		}
	})

	t.Run("LogsGroup", func(t *testing.T) {
		out := admin.ok(t, "logs", "group", "tp-model", "-n", ns)
		checkRankLines(t, out)
		// -f streams: every rank's lines arrive, prefixed, until stopped.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := admin.cmd(ctx, "logs", "group", "tp-model", "-n", ns, "-f", "--tail", "2")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		sc := bufio.NewScanner(stdout)
		for len(seen) < 4 && sc.Scan() {
			if m := regexp.MustCompile(`^\[rank (\d)\] `).FindStringSubmatch(sc.Text()); m != nil {
				seen[m[1]] = true
			}
		}
		if len(seen) < 4 {
			t.Errorf("logs -f: lines of ranks %v only", seen)
		}
		cmd.Process.Kill()
		cmd.Wait()
	})

	t.Run("RefusedWithoutRights", func(t *testing.T) {
		// A service account with no role in the namespace, by its token
		// (apiserver audience, as kubectl would send it).
		eve := tokenKubeconfig(t, c, cs, ns, "eve")
		for _, args := range [][]string{{"get", "groups", "-n", ns}, {"describe", "group", "tp-model", "-n", ns}, {"restart", "group", "tp-model", "-n", ns}, {"get", "groups", "-A"}} {
			_, errOut, err := eve.run(t, args...)
			if err == nil || !strings.Contains(errOut, "forbidden") || !strings.Contains(errOut, "system:serviceaccount:"+ns+":eve") {
				t.Errorf("eve: kubectl muster %s: err %v, stderr %q; want forbidden naming the user", strings.Join(args, " "), err, errOut)
			}
		}
		// A person by a client certificate of the cluster's CA, with no
		// rights anywhere.
		mallory := certKubeconfig(t, c, "mallory")
		if _, errOut, err := mallory.run(t, "get", "groups", "-A"); err == nil || !strings.Contains(errOut, "user mallory may not list") {
			t.Errorf("mallory: get groups -A: err %v, stderr %q; want forbidden", err, errOut)
		}
		// A viewer may read but not restart.
		viewer := tokenKubeconfig(t, c, cs, ns, "viewer")
		bind(t, cs, ns, "viewer", "view")
		if out := viewer.ok(t, "get", "groups", "-n", ns); !strings.Contains(out, "tp-model") {
			t.Errorf("viewer: get groups:\n%s", out)
		}
		if _, errOut, err := viewer.run(t, "restart", "group", "tp-model", "-n", ns); err == nil || !strings.Contains(errOut, "groups/restart") {
			t.Errorf("viewer: restart: err %v, stderr %q; want forbidden naming groups/restart", err, errOut)
		}
	})

	t.Run("RestartGroup", func(t *testing.T) {
		out := admin.ok(t, "restart", "group", "tp-model", "-n", ns, "--reason", "e2e restart", "--wait", "3m")
		if !strings.Contains(out, "generation 0 -> 1") || !strings.Contains(out, "ready in generation 1") {
			t.Errorf("restart:\n%s", out)
		}
		for name := range pods {
			if gen, _, _ := e2etest.LastRank(t, cs, ns, name); gen != "1" {
				t.Errorf("%s: last rank in generation %s after restart, want 1", name, gen)
			}
		}
		desc := admin.ok(t, "describe", "group", "tp-model", "-n", ns)
		t.Logf("after restart:\n%s", desc)
		if !regexp.MustCompile(`(?m)^  0\s+\d\d:\d\d:\d\d\s+.*restarted by user kubernetes-admin: e2e restart$`).MatchString(desc) ||
			!regexp.MustCompile(`Generation:\s+1\n`).MatchString(desc) || !regexp.MustCompile(`Restarts:\s+1\n`).MatchString(desc) {
			t.Errorf("describe after restart lacks the generation, restart count or the history row with its reason")
		}
	})
}

// checkRankLines checks that each rank's own line ("rank R/4") is prefixed
// with that rank, and that all four ranks are there.
func checkRankLines(t *testing.T, out string) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^\[rank (\d)\] tp_server: rank (\d)/4 `)
	seen := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		if m[1] != m[2] {
			t.Errorf("a line of rank %s is prefixed rank %s", m[2], m[1])
		}
		seen[m[1]] = true
	}
	if len(seen) != 4 {
		t.Errorf("logs: ranks %v have their own line, want 0-3:\n%s", seen, e2etest.Tail(out, 20))
	}
}

func waitReady(t *testing.T, cs kubernetes.Interface, ns string, n int) map[string]v1.Pod {
	t.Helper()
	out := map[string]v1.Pod{}
	err := wait.PollUntilContextTimeout(context.Background(), 300*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=tp-model"})
		if err != nil {
			return false, nil
		}
		ready := 0
		for _, p := range list.Items {
			if e2etest.PodReady(&p) {
				ready++
				out[p.Name] = p
			}
		}
		return ready == n && len(list.Items) == n, nil
	})
	if err != nil {
		t.Fatalf("tp-model not Ready: %v", err)
	}
	return out
}

// tokenKubeconfig makes service account name in ns and a kubeconfig with
// its token (the apiserver's audience).
func tokenKubeconfig(t *testing.T, c *cluster.Cluster, cs kubernetes.Interface, ns, name string) plugin {
	t.Helper()
	ctx := context.Background()
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &v1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return writeKubeconfig(t, c, name, &clientcmdapi.AuthInfo{Token: tr.Status.Token}, ns)
}

// certKubeconfig is a kubeconfig of user name with a client certificate
// of the cluster's CA.
func certKubeconfig(t *testing.T, c *cluster.Cluster, name string) plugin {
	t.Helper()
	ca, err := pki.LoadCA(c.CAFile(), c.CAKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(pki.Leaf{CommonName: name, Client: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return writeKubeconfig(t, c, name, &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}, "default")
}

func writeKubeconfig(t *testing.T, c *cluster.Cluster, name string, ai *clientcmdapi.AuthInfo, ns string) plugin {
	t.Helper()
	admin, err := clientcmd.LoadFromFile(c.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg := clientcmdapi.NewConfig()
	for k, v := range admin.Clusters {
		cfg.Clusters[k] = v
		cfg.AuthInfos[name] = ai
		cfg.Contexts[name] = &clientcmdapi.Context{Cluster: k, AuthInfo: name, Namespace: ns}
		cfg.CurrentContext = name
	}
	file := filepath.Join(t.TempDir(), name+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, file); err != nil {
		t.Fatal(err)
	}
	root, _ := clustertest.RepoRoot()
	return plugin{kubectl: filepath.Join(clustertest.Bins(t), "kubectl"), path: e2etest.MusterBins(t, root), kubeconfig: file}
}

// bind grants the (existing) service account sa of ns the ClusterRole role in ns.
func bind(t *testing.T, cs kubernetes.Interface, ns, sa, role string) {
	t.Helper()
	ctx := context.Background()
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: sa + "-" + role},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}},
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
