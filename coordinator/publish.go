package coordinator

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/muster-dev/muster/podapi"
)

// PublishConfigMap is the ConfigMap (in --publish-namespace) that says
// where the coordinator is (podapi.Coordinator*): kubectl muster reads it
// with the user's own credentials (the chart lets every authenticated user
// read it, as kube-public's cluster-info).
const PublishConfigMap = podapi.CoordinatorConfigMap

// publish writes PublishConfigMap with --publish-namespace. A failure is
// logged, not fatal: only kubectl muster's discovery needs it (it also
// takes --coordinator).
func (c *Coordinator) publish(ctx context.Context, log *slog.Logger) error {
	ns := c.cfg.PublishNamespace
	if ns == "" || c.kube == nil {
		return nil
	}
	addr := c.cfg.Advertise
	if addr == "" {
		addr = c.Addr()
	}
	addr, _, _ = strings.Cut(addr, ",")
	want := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: PublishConfigMap, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/name": "muster", "app.kubernetes.io/component": "coordinator"}},
		Data:       map[string]string{podapi.CoordinatorAddressKey: addr, podapi.CoordinatorCAKey: string(c.agentCA)},
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.putConfigMap(pctx, want); err != nil {
		log.Warn("could not publish where the coordinator is; kubectl muster then needs --coordinator", "configmap", ns+"/"+PublishConfigMap, "err", err)
		return nil
	}
	log.Info("published where the coordinator is, for kubectl muster", "configmap", ns+"/"+PublishConfigMap, "address", addr)
	return nil
}

func (c *Coordinator) putConfigMap(ctx context.Context, want *corev1.ConfigMap) error {
	cms := c.kube.CoreV1().ConfigMaps(want.Namespace)
	for {
		cur, err := cms.Get(ctx, want.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = cms.Create(ctx, want, metav1.CreateOptions{})
		case err == nil:
			cur.Data, cur.Labels = want.Data, want.Labels
			_, err = cms.Update(ctx, cur, metav1.UpdateOptions{})
		}
		if err == nil || !(apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)) {
			if err != nil {
				return fmt.Errorf("write ConfigMap: %w", err)
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
