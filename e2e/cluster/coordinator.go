package cluster

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/muster-dev/muster/internal/freeport"
	"github.com/muster-dev/muster/podapi"
)

// startCoordinator runs muster's coordinator against the cluster: on the
// cluster's own etcd (under muster's key prefix, next to Kubernetes'
// /registry), with the admin kubeconfig so that it mirrors group readiness
// onto pods, with its admission webhook registered, and publishing where
// it is in ConfigMap muster-coordinator of CoordinatorNamespace. It
// returns once the webhook configuration and the ConfigMap are in place,
// so that every pod created after Start is injected and kubectl muster
// finds the coordinator.
func (c *Cluster) startCoordinator(ctx context.Context) error {
	if c.cfg.Binaries.Coordinator == "" {
		return nil
	}
	ports, err := freeport.Pick(2)
	if err != nil {
		return err
	}
	host := "127.0.0.1"
	// Node backends whose pods live in a network of their own say where
	// pods reach the host there.
	if g, ok := c.cfg.Nodes.(interface{ Gateway() string }); ok && g.Gateway() != "" {
		host = g.Gateway()
	}
	c.coordinator = net.JoinHostPort(host, strconv.Itoa(ports[0]))
	args := []string{
		"--listen=" + c.coordinator,
		"--data-dir=" + filepath.Join(c.stateDir, "coordinator"),
		"--etcd-endpoints=" + c.etcd.ClientURL,
		"--kubeconfig=" + c.kubeconfig,
		"--webhook-listen=" + net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])),
		// ConfigMap muster-coordinator: where kubectl muster finds it.
		"--publish-namespace=" + CoordinatorNamespace,
	}
	if _, err := c.StartProcess("coordinator", c.cfg.Binaries.Coordinator, args...); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "coordinator webhook registered", func(ctx context.Context) (bool, string, error) {
		_, err := c.clientset.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "muster", metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		return true, "", nil
	}); err != nil {
		return err
	}
	return c.waitFor(ctx, "coordinator published in ConfigMap "+CoordinatorNamespace+"/"+podapi.CoordinatorConfigMap, func(ctx context.Context) (bool, string, error) {
		_, err := c.clientset.CoreV1().ConfigMaps(CoordinatorNamespace).Get(ctx, podapi.CoordinatorConfigMap, metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		return true, "", nil
	})
}

// CoordinatorAddr is the coordinator's gRPC address ("" without one).
func (c *Cluster) CoordinatorAddr() string { return c.coordinator }

func validateCoordinator(cfg Config) error {
	if cfg.Binaries.Coordinator == "" {
		return nil
	}
	if err := statBinary(cfg.Binaries.Coordinator); err != nil {
		return fmt.Errorf("coordinator binary: %w (make build builds it)", err)
	}
	return nil
}
