package coordinator_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/muster-dev/muster/coordinator/testcoord"
	"github.com/muster-dev/muster/coordinator/webhook"
)

// With --webhook-tls-dir the webhook serves the certificate it is given
// (as a Helm chart or cert-manager mounts it), on a wildcard address, and
// makes none of its own.
func TestWebhookServesGivenCertificate(t *testing.T) {
	given := t.TempDir()
	ca, certFile, keyFile, err := webhook.EnsureCerts(given, []string{"muster-coordinator.muster.svc"})
	if err != nil {
		t.Fatal(err)
	}
	// Only the pair, as a kubernetes.io/tls Secret mounts it.
	tlsDir := t.TempDir()
	for src, dst := range map[string]string{certFile: "tls.crt", keyFile: "tls.key"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tlsDir, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, port, _ := net.SplitHostPort(testcoord.FreeAddr(t))
	cfg := testcoord.Config(t)
	cfg.WebhookListen = "0.0.0.0:" + port
	cfg.WebhookTLSDir = tlsDir
	testcoord.Start(t, cfg)

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	conn, err := tls.Dial("tcp", "127.0.0.1:"+port, &tls.Config{RootCAs: roots, ServerName: "muster-coordinator.muster.svc"})
	if err != nil {
		t.Fatalf("TLS to the webhook with the given CA and the Service's name: %v", err)
	}
	conn.Close()
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "webhook")); !os.IsNotExist(err) {
		t.Errorf("the coordinator made certificates of its own in %s/webhook (stat: %v)", cfg.DataDir, err)
	}
}
