package auth

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The apiserver publishes the CA of its client certificates (its
// --client-ca-file) in this ConfigMap for servers that authenticate its
// users themselves, as aggregated API servers do.
const (
	ClientCANamespace = "kube-system"
	ClientCAConfigMap = "extension-apiserver-authentication"
	ClientCAKey       = "client-ca-file"
)

// KubeClientCA keeps the cluster's client CA, read from the apiserver's
// ConfigMap and re-read every Refresh.
type KubeClientCA struct {
	Client  kubernetes.Interface
	Refresh time.Duration
	// Extra is PEM of other client CAs (--client-ca) that Combined adds.
	Extra []byte

	pool, combined atomic.Pointer[x509.CertPool]
}

// Pool returns the CA last read (nil before the first read).
func (k *KubeClientCA) Pool() *x509.CertPool { return k.pool.Load() }

// Combined returns the CA last read together with Extra: the client CAs
// a TLS handshake accepts.
func (k *KubeClientCA) Combined() *x509.CertPool { return k.combined.Load() }

// Load reads the CA once.
func (k *KubeClientCA) Load(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cm, err := k.Client.CoreV1().ConfigMaps(ClientCANamespace).Get(ctx, ClientCAConfigMap, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read ConfigMap %s/%s: %w", ClientCANamespace, ClientCAConfigMap, err)
	}
	pem := cm.Data[ClientCAKey]
	if pem == "" {
		return fmt.Errorf("ConfigMap %s/%s has no %s (the apiserver runs without --client-ca-file)", ClientCANamespace, ClientCAConfigMap, ClientCAKey)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(pem)) {
		return fmt.Errorf("ConfigMap %s/%s: %s holds no PEM certificate", ClientCANamespace, ClientCAConfigMap, ClientCAKey)
	}
	both := pool.Clone()
	both.AppendCertsFromPEM(k.Extra)
	k.pool.Store(pool)
	k.combined.Store(both)
	return nil
}

// Run re-reads the CA every Refresh until ctx ends, keeping the last good
// one when a read fails.
func (k *KubeClientCA) Run(ctx context.Context, log *slog.Logger) {
	t := time.NewTicker(k.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := k.Load(ctx); err != nil && ctx.Err() == nil {
				log.Warn("cluster client CA not refreshed; keeping the last one", "err", err)
			}
		}
	}
}
