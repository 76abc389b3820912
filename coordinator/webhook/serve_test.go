package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	certutil "k8s.io/client-go/util/cert"
)

func TestEnsureCerts(t *testing.T) {
	dir := t.TempDir()
	hosts := []string{"127.0.0.1", "localhost"}
	caPEM, certFile, keyFile, err := EnsureCerts(dir, hosts)
	if err != nil {
		t.Fatal(err)
	}
	serving := readFile(t, certFile)
	verify(t, caPEM, certFile, keyFile, hosts...)

	// Valid files are reused as they are.
	caPEM2, certFile2, keyFile2, err := EnsureCerts(dir, hosts)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(caPEM, caPEM2) || certFile2 != certFile || keyFile2 != keyFile || !bytes.Equal(serving, readFile(t, certFile)) {
		t.Error("second call with the same hosts replaced a valid CA or serving certificate")
	}

	// A new host: a new serving certificate from the same CA, so a
	// registered caBundle stays good.
	more := append(hosts, "webhook.muster-system.svc")
	caPEM3, _, _, err := EnsureCerts(dir, more)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(caPEM, caPEM3) || bytes.Equal(serving, readFile(t, certFile)) {
		t.Error("a new host should reissue the serving certificate and keep the CA")
	}
	verify(t, caPEM, certFile, keyFile, more...)

	// A broken CA key: everything is made again.
	if err := os.WriteFile(filepath.Join(dir, caKeyName), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	caPEM4, _, _, err := EnsureCerts(dir, more)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(caPEM, caPEM4) {
		t.Error("a CA whose key is unreadable was kept")
	}
	verify(t, caPEM4, certFile, keyFile, more...)

	for _, bad := range [][]string{nil, {""}, {"127.0.0.1", ""}} {
		if _, _, _, err := EnsureCerts(dir, bad); err == nil || !strings.Contains(err.Error(), "none empty") {
			t.Errorf("EnsureCerts(%q): err = %v, want one naming the hosts", bad, err)
		}
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// verify checks that the serving certificate is trusted through caPEM for
// every host, and that its key matches.
func verify(t *testing.T, caPEM []byte, certFile, keyFile string, hosts ...string) {
	t.Helper()
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Fatalf("serving pair: %v", err)
	}
	cas, err := certutil.ParseCertsPEM(caPEM)
	if err != nil || len(cas) != 1 || !cas[0].IsCA {
		t.Fatalf("caPEM: %d certificates, err %v; want one CA", len(cas), err)
	}
	certs, err := certutil.ParseCertsPEM(readFile(t, certFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cas[0])
	for _, h := range hosts {
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: h}); err != nil {
			t.Errorf("serving certificate for %s: %v", h, err)
		}
	}
}

// TestServe calls the handler over TLS as the apiserver does, trusting
// only EnsureCerts' CA, and checks that Serve stops with its context.
func TestServe(t *testing.T) {
	caPEM, certFile, keyFile, err := EnsureCerts(t.TempDir(), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- ServeListener(ctx, ln, certFile, keyFile, NewHandler(testConfig(), nil)) }()

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	resp, err := client.Post("https://"+ln.Addr().String()+"/mutate", "application/json", strings.NewReader(strings.Replace(review, "SIZE", "4", 1)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("POST /mutate over TLS: %s", resp.Status)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after its context ended: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return 10s after its context ended")
	}

	if err := Serve(t.Context(), ln.Addr().String(), certFile, "missing.key", NewHandler(testConfig(), nil)); err == nil || !strings.Contains(err.Error(), "load serving certificate") {
		t.Errorf("Serve without a key: err = %v", err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if err := Serve(t.Context(), busy.Addr().String(), certFile, keyFile, NewHandler(testConfig(), nil)); err == nil || !strings.Contains(err.Error(), "listen on") {
		t.Errorf("Serve on a busy address: err = %v", err)
	}
}
