package coordinator

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
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
	put := func() error {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return c.putConfigMap(pctx, want)
	}
	if err := put(); err != nil {
		log.Warn("could not publish where the coordinator is (retried every "+republish.String()+"); kubectl muster needs --coordinator until then", "configmap", ns+"/"+PublishConfigMap, "err", err)
	} else {
		log.Info("published where the coordinator is, for kubectl muster", "configmap", ns+"/"+PublishConfigMap, "address", addr)
	}
	// Kept true: made again when deleted, set back when changed, written
	// at all only then.
	go func() {
		t := time.NewTicker(republish)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := put(); err != nil && ctx.Err() == nil {
					log.Warn("could not publish where the coordinator is", "configmap", ns+"/"+PublishConfigMap, "err", err)
				}
			}
		}
	}()
	return nil
}

// republish is how often the published ConfigMap is checked.
var republish = 5 * time.Minute

func (c *Coordinator) putConfigMap(ctx context.Context, want *corev1.ConfigMap) error {
	cms := c.kube.CoreV1().ConfigMaps(want.Namespace)
	for {
		cur, err := cms.Get(ctx, want.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = cms.Create(ctx, want, metav1.CreateOptions{})
		case err == nil && maps.Equal(cur.Data, want.Data) && maps.Equal(cur.Labels, want.Labels):
			return nil
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
