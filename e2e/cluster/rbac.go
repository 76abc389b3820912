package cluster

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/muster-dev/muster/podapi"
)

// CoordinatorNamespace is where the cluster's coordinator publishes
// ConfigMap muster-coordinator (--publish-namespace), as the chart does in
// its release namespace: kubectl muster finds the coordinator there.
const CoordinatorNamespace = podapi.CoordinatorNamespace

// The ClusterRoles people are granted muster's rights with, as the chart's
// release muster names them: read groups (aggregated into view, edit and
// admin) and restart them (into edit and admin).
const (
	GroupReaderRole   = "muster-group-reader"
	GroupOperatorRole = "muster-group-operator"
	// DiscoveryRole, in CoordinatorNamespace, lets every authenticated
	// user get ConfigMap muster-coordinator.
	DiscoveryRole = "muster-coordinator-discovery"
)

// installMusterRBAC makes, before the coordinator starts, what the chart
// installs beside it for people: CoordinatorNamespace, the group-reader and
// group-operator ClusterRoles, and the Role and RoleBinding that let every
// authenticated user read where the coordinator is. (The coordinator here
// runs with the admin kubeconfig: it needs no RBAC of its own.)
func (c *Cluster) installMusterRBAC(ctx context.Context) error {
	if c.cfg.Binaries.Coordinator == "" {
		return nil
	}
	labels := map[string]string{"app.kubernetes.io/name": "muster", "app.kubernetes.io/component": "coordinator"}
	aggregate := func(to ...string) map[string]string {
		l := map[string]string{}
		for k, v := range labels {
			l[k] = v
		}
		for _, r := range to {
			l["rbac.authorization.k8s.io/aggregate-to-"+r] = "true"
		}
		return l
	}
	rbac := c.clientset.RbacV1()
	steps := []struct {
		what   string
		create func() error
	}{
		{"namespace " + CoordinatorNamespace, func() error {
			_, err := c.clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: CoordinatorNamespace, Labels: labels}}, metav1.CreateOptions{})
			return err
		}},
		{"ClusterRole " + GroupReaderRole, func() error {
			_, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
				ObjectMeta: metav1.ObjectMeta{Name: GroupReaderRole, Labels: aggregate("view", "edit", "admin")},
				Rules:      []rbacv1.PolicyRule{{APIGroups: []string{podapi.RBACGroup}, Resources: []string{podapi.RBACResource}, Verbs: []string{"get", "list", "watch"}}},
			}, metav1.CreateOptions{})
			return err
		}},
		{"ClusterRole " + GroupOperatorRole, func() error {
			_, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
				ObjectMeta: metav1.ObjectMeta{Name: GroupOperatorRole, Labels: aggregate("edit", "admin")},
				Rules: []rbacv1.PolicyRule{{APIGroups: []string{podapi.RBACGroup},
					Resources: []string{podapi.RBACResource + "/" + podapi.RBACRestartSubresource}, Verbs: []string{"create"}}},
			}, metav1.CreateOptions{})
			return err
		}},
		{"Role " + DiscoveryRole, func() error {
			_, err := rbac.Roles(CoordinatorNamespace).Create(ctx, &rbacv1.Role{
				ObjectMeta: metav1.ObjectMeta{Name: DiscoveryRole, Labels: labels},
				Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"},
					ResourceNames: []string{podapi.CoordinatorConfigMap}, Verbs: []string{"get"}}},
			}, metav1.CreateOptions{})
			return err
		}},
		{"RoleBinding " + DiscoveryRole, func() error {
			_, err := rbac.RoleBindings(CoordinatorNamespace).Create(ctx, &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: DiscoveryRole, Labels: labels},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: DiscoveryRole},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:authenticated"}},
			}, metav1.CreateOptions{})
			return err
		}},
	}
	for _, s := range steps {
		if err := s.create(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s: %w", s.what, err)
		}
	}
	return nil
}
