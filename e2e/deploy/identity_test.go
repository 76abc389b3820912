package deploy_test

import (
	"path/filepath"
	"slices"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/muster-dev/muster/e2e/cluster"
)

// asComponent creates, for real, the chart's ServiceAccount and RBAC of
// one component (app.kubernetes.io/component) and returns a kubeconfig
// that authenticates as that ServiceAccount: a process run with it has
// exactly the permissions the chart grants, as it would in its pod.
func asComponent(t *testing.T, c *cluster.Cluster, a *applier, objs []*unstructured.Unstructured, component string) string {
	t.Helper()
	rbac := []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
	sa := ""
	for _, o := range objs {
		if o.GetLabels()["app.kubernetes.io/component"] != component || !slices.Contains(rbac, o.GetKind()) {
			continue
		}
		if _, err := a.applyFor(t.Context(), o, nil); err != nil {
			t.Fatalf("create %s: %v", o.GetName(), err)
		}
		if o.GetKind() == "ServiceAccount" {
			sa = o.GetName()
		}
	}
	if sa == "" {
		t.Fatalf("the chart has no ServiceAccount for the %s", component)
	}
	tr, err := c.Clientset().CoreV1().ServiceAccounts(release.Namespace).CreateToken(t.Context(), sa,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for ServiceAccount %s: %v", sa, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: c.APIServer(), CertificateAuthority: c.CAFile()}
	cfg.AuthInfos["sa"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "sa"}
	cfg.CurrentContext = "c"
	path := filepath.Join(t.TempDir(), component+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}
