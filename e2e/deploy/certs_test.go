package deploy_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestChartWebhookCertificate: the certificate the chart makes (certs=helm)
// is one the coordinator can serve (the key matches) and the apiserver
// accepts when it calls the Service: signed by the caBundle the webhook
// configuration carries, for <service>.<namespace>.svc.
func TestChartWebhookCertificate(t *testing.T) {
	objs := render(t, nil)
	secret := find(t, objs, "Secret", "muster-webhook-tls")
	data := func(key string) []byte {
		t.Helper()
		s, _, _ := unstructured.NestedString(secret.Object, "data", key)
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b) == 0 {
			t.Fatalf("Secret %s: data[%s] is not base64 PEM: %v", secret.GetName(), key, err)
		}
		return b
	}
	pair, err := tls.X509KeyPair(data("tls.crt"), data("tls.key"))
	if err != nil {
		t.Fatalf("the coordinator could not load the chart's certificate: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}

	webhooks, _, _ := unstructured.NestedSlice(find(t, objs, "MutatingWebhookConfiguration", "muster").Object, "webhooks")
	caBundle, _, _ := unstructured.NestedString(webhooks[0].(map[string]any), "clientConfig", "caBundle")
	ca, err := base64.StdEncoding.DecodeString(caBundle)
	if err != nil {
		t.Fatalf("caBundle: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		t.Fatal("caBundle holds no PEM certificate")
	}
	if string(ca) != string(data("ca.crt")) {
		t.Error("the Secret's ca.crt is not the webhook configuration's caBundle")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		DNSName:   "muster-coordinator.muster.svc",
		Roots:     roots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		t.Errorf("the apiserver would refuse the webhook's certificate when calling the Service: %v", err)
	}
}
