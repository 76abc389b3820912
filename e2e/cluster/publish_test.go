package cluster_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/test/clustertest"
)

// A cluster with a coordinator has what the chart installs for people:
// the coordinator publishes where it is in ConfigMap muster-coordinator of
// muster (an address whose TLS its ca.crt verifies), every
// authenticated user may read it, and RBAC's edit lets restart groups
// (group-operator) and view read them (group-reader).
func TestCoordinatorPublishes(t *testing.T) {
	c := clustertest.New(t, func(cfg *cluster.Config) {
		cfg.Nodes = nil // no pods run here
		cfg.Binaries.Coordinator = filepath.Join(clustertest.Bins(t), "coordinator")
	})
	ctx := t.Context()
	cs := c.Clientset()

	cm, err := cs.CoreV1().ConfigMaps(cluster.CoordinatorNamespace).Get(ctx, podapi.CoordinatorConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("ConfigMap %s/%s once the cluster is up: %v", cluster.CoordinatorNamespace, podapi.CoordinatorConfigMap, err)
	}
	addr := cm.Data[podapi.CoordinatorAddressKey]
	if addr != c.CoordinatorAddr() {
		t.Errorf("published address %q, want the coordinator's %q", addr, c.CoordinatorAddr())
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(cm.Data[podapi.CoordinatorCAKey])) {
		t.Fatalf("published ca.crt holds no PEM certificate: %q", cm.Data[podapi.CoordinatorCAKey])
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{RootCAs: pool, ServerName: host, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("TLS to the published address, verified with the published CA: %v", err)
	}
	conn.Close()

	// Who may do what, as the apiserver answers the coordinator.
	may := func(user string, groups []string, ra authzv1.ResourceAttributes) bool {
		t.Helper()
		sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User: user, Groups: groups, ResourceAttributes: &ra}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return sar.Status.Allowed
	}
	anyone := []string{"system:authenticated"}
	published := authzv1.ResourceAttributes{Namespace: cluster.CoordinatorNamespace, Verb: "get", Resource: "configmaps", Name: podapi.CoordinatorConfigMap}
	if !may("nobody", anyone, published) {
		t.Error("an authenticated user may not get the published ConfigMap")
	}
	other := published
	other.Name = "something-else"
	if may("nobody", anyone, other) {
		t.Error("an authenticated user may get any ConfigMap of muster")
	}

	// The controller-manager aggregates the ClusterRoles into view and
	// edit; then a user bound to edit in a namespace may restart groups
	// there, one bound to view may read but not restart.
	for _, b := range []struct{ user, role string }{{"ed", "edit"}, {"vi", "view"}} {
		if _, err := cs.RbacV1().RoleBindings("default").Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: b.user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: b.role},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: b.user}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	restart := authzv1.ResourceAttributes{Namespace: "default", Verb: "create", Group: podapi.RBACGroup, Resource: podapi.RBACResource,
		Subresource: podapi.RBACRestartSubresource, Name: "llama"}
	read := authzv1.ResourceAttributes{Namespace: "default", Verb: "get", Group: podapi.RBACGroup, Resource: podapi.RBACResource, Name: "llama"}
	deadline := time.Now().Add(45 * time.Second)
	for !(may("ed", anyone, restart) && may("vi", anyone, read)) {
		if time.Now().After(deadline) {
			edit, _ := cs.RbacV1().ClusterRoles().Get(ctx, "edit", metav1.GetOptions{})
			t.Fatalf("edit may not restart groups, or view may not read them, 45s on (aggregation of %s and %s); edit's rules: %v",
				cluster.GroupOperatorRole, cluster.GroupReaderRole, edit.Rules)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if may("vi", anyone, restart) {
		t.Error("view may restart groups")
	}
	other = restart
	other.Namespace = cluster.CoordinatorNamespace
	if may("ed", anyone, other) {
		t.Error("edit in default may restart groups of another namespace")
	}
	for _, name := range []string{cluster.GroupReaderRole, cluster.GroupOperatorRole} {
		r, err := cs.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Rules) != 1 || !slices.Equal(r.Rules[0].APIGroups, []string{"muster.dev"}) {
			t.Errorf("ClusterRole %s rules %v, want one rule on muster.dev", name, r.Rules)
		}
	}
}
