package auth_test

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/pki"
)

// verifiesWith reports whether pool verifies a client certificate of ca.
func verifiesWith(t *testing.T, pool *x509.CertPool, ca testCA) bool {
	t.Helper()
	if pool == nil {
		return false
	}
	leaf := ca.issue(t, pki.Leaf{CommonName: "someone"})
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}

func TestKubeClientCALoad(t *testing.T) {
	kube, members, other := newTestCA(t, "kubernetes"), newTestCA(t, "muster"), newTestCA(t, "other")
	cm := func(data map[string]string) *v1.ConfigMap {
		return &v1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: auth.ClientCANamespace, Name: auth.ClientCAConfigMap}, Data: data}
	}
	tests := []struct {
		name    string
		objs    []runtime.Object
		extra   []byte
		wantErr []string // nil: loaded
		// the CAs Combined verifies (and Pool, the cluster's alone).
		wantCombined []testCA
	}{
		{
			name:         "the cluster's CA and --client-ca",
			objs:         []runtime.Object{cm(map[string]string{auth.ClientCAKey: string(kube.ca.PEM), "requestheader-client-ca-file": string(other.ca.PEM)})},
			extra:        members.ca.PEM,
			wantCombined: []testCA{kube, members},
		},
		{
			name:         "the cluster's CA alone",
			objs:         []runtime.Object{cm(map[string]string{auth.ClientCAKey: string(kube.ca.PEM)})},
			wantCombined: []testCA{kube},
		},
		{
			name:    "no ConfigMap",
			extra:   members.ca.PEM,
			wantErr: []string{"kube-system/extension-apiserver-authentication", "not found"},
		},
		{
			name:    "no client-ca-file (the apiserver has no --client-ca-file)",
			objs:    []runtime.Object{cm(map[string]string{"requestheader-client-ca-file": string(other.ca.PEM)})},
			wantErr: []string{"kube-system/extension-apiserver-authentication", "no client-ca-file", "--client-ca-file"},
		},
		{
			name:    "not PEM",
			objs:    []runtime.Object{cm(map[string]string{auth.ClientCAKey: "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"})},
			wantErr: []string{"client-ca-file", "no PEM certificate"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := &auth.KubeClientCA{Client: fake.NewClientset(tc.objs...), Refresh: time.Hour, Extra: tc.extra}
			err := k.Load(testCtx(t))
			if tc.wantErr != nil {
				if err == nil {
					t.Fatal("Load = nil, want an error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("Load = %q, does not name %q", err, w)
					}
				}
				if k.Pool() != nil || k.Combined() != nil {
					t.Error("a failed first Load left CAs behind")
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			for _, ca := range []testCA{kube, members, other} {
				inCombined := false
				for _, w := range tc.wantCombined {
					inCombined = inCombined || w.ca == ca.ca
				}
				if got := verifiesWith(t, k.Combined(), ca); got != inCombined {
					t.Errorf("Combined verifies %s: %v, want %v", ca.ca.Cert.Subject.CommonName, got, inCombined)
				}
				if got := verifiesWith(t, k.Pool(), ca); got != (ca.ca == kube.ca) {
					t.Errorf("Pool verifies %s: %v, want %v (the cluster's CA only)", ca.ca.Cert.Subject.CommonName, got, ca.ca == kube.ca)
				}
			}
		})
	}
}

// A refresh that fails keeps the CA last read; one that succeeds replaces
// it (the cluster's CA rotated).
func TestKubeClientCAReload(t *testing.T) {
	first, second := newTestCA(t, "kubernetes-1"), newTestCA(t, "kubernetes-2")
	cs := fake.NewClientset(&v1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: auth.ClientCANamespace, Name: auth.ClientCAConfigMap},
		Data: map[string]string{auth.ClientCAKey: string(first.ca.PEM)}})
	k := &auth.KubeClientCA{Client: cs, Refresh: time.Hour}
	ctx := testCtx(t)
	if err := k.Load(ctx); err != nil {
		t.Fatal(err)
	}
	cms := cs.CoreV1().ConfigMaps(auth.ClientCANamespace)
	if _, err := cms.Update(ctx, &v1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: auth.ClientCANamespace, Name: auth.ClientCAConfigMap},
		Data: map[string]string{auth.ClientCAKey: "garbage"}}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := k.Load(ctx); err == nil {
		t.Fatal("Load of garbage = nil, want an error")
	}
	if !verifiesWith(t, k.Pool(), first) || !verifiesWith(t, k.Combined(), first) {
		t.Fatal("a failed reload dropped the CA last read")
	}
	if _, err := cms.Update(ctx, &v1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: auth.ClientCANamespace, Name: auth.ClientCAConfigMap},
		Data: map[string]string{auth.ClientCAKey: string(second.ca.PEM)}}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := k.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	if verifiesWith(t, k.Combined(), first) || !verifiesWith(t, k.Combined(), second) {
		t.Error("after a rotation Combined does not verify the new CA alone")
	}
}
