package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"slices"
	"testing"

	"k8s.io/client-go/util/keyutil"
)

// The control plane's certificates, as the components read them: each
// pair loads, is signed by the cluster CA for its use and names, and the
// service-account key is one the apiserver reads as a public key too.
func TestNewCerts(t *testing.T) {
	p, err := newCerts(t.TempDir(), net.IPv4(10, 96, 0, 1))
	if err != nil {
		t.Fatalf("newCerts: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)
	server, client := x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth
	for _, tc := range []struct {
		cert, key string
		usage     x509.ExtKeyUsage
		cn        string
		org       []string
		hosts     []string
	}{
		{p.apiserverCert, p.apiserverKey, server, "kube-apiserver", nil,
			[]string{"localhost", "kubernetes", "kubernetes.default.svc.cluster.local", "127.0.0.1", "::1", "10.96.0.1"}},
		{p.servingCert, p.servingKey, server, "localhost", nil, []string{"localhost", "127.0.0.1", "::1"}},
		{p.adminCert, p.adminKey, client, "kubernetes-admin", []string{"system:masters"}, nil},
		{p.proxyCert, p.proxyKey, client, frontProxyClient, nil, nil},
		{p.kubeletClientCert, p.kubeletClientKey, client, "kube-apiserver-kubelet-client", []string{"system:masters"}, nil},
	} {
		pair, err := tls.LoadX509KeyPair(tc.cert, tc.key)
		if err != nil {
			t.Errorf("%s: %v", tc.cert, err)
			continue
		}
		c, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if c.Subject.CommonName != tc.cn || !slices.Equal(c.Subject.Organization, tc.org) {
			t.Errorf("%s: subject CN %q O %q, want %q %q", tc.cert, c.Subject.CommonName, c.Subject.Organization, tc.cn, tc.org)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
			t.Errorf("%s for usage %v: %v", tc.cert, tc.usage, err)
		}
		for _, h := range tc.hosts {
			if err := c.VerifyHostname(h); err != nil {
				t.Errorf("%s: %v", tc.cert, err)
			}
		}
		if st, err := os.Stat(tc.key); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v (err %v), want 0600", tc.key, st.Mode(), err)
		}
	}

	// --service-account-key-file reads the public half of this private key
	// (keyutil.ParsePublicKeysPEM); --service-account-signing-key-file and
	// kcm read it as a private key.
	b, err := os.ReadFile(p.saKey)
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := keyutil.ParsePublicKeysPEM(b); err != nil || len(keys) != 1 {
		t.Errorf("service-account key as the apiserver's public key: %d keys, %v", len(keys), err)
	}
	if _, err := keyutil.PrivateKeyFromFile(p.saKey); err != nil {
		t.Errorf("service-account key as a signing key: %v", err)
	}
	if _, err := keyutil.PrivateKeyFromFile(p.caKey); err != nil {
		t.Errorf("CA key as kcm's --cluster-signing-key-file: %v", err)
	}
}
