package pki_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/muster-dev/muster/pki"
)

func newCA(t *testing.T) (*pki.CA, []byte) {
	t.Helper()
	ca, key, err := pki.NewCA("test-ca", 24*time.Hour)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca, key
}

func parse(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %q", certPEM)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatalf("parse certificate: %v", err)
	}
	return c
}

func pool(ca *pki.CA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func TestNewCA(t *testing.T) {
	ca, key := newCA(t)
	c := parse(t, ca.PEM)
	if !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 || c.Subject.CommonName != "test-ca" {
		t.Errorf("CA certificate: IsCA %v, key usage %v, CN %q; want a signing CA named test-ca", c.IsCA, c.KeyUsage, c.Subject.CommonName)
	}
	if !c.Equal(ca.Cert) {
		t.Error("CA.PEM and CA.Cert are different certificates")
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("CA is not self-signed: %v", err)
	}
	if b, _ := pem.Decode(key); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("CA key is not a PEM PKCS#8 key: %q", key)
	}
	if d := time.Until(c.NotAfter); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("CA valid for %s more, want about 24h", d)
	}
	other, _ := newCA(t)
	if ca.Cert.SerialNumber.Cmp(other.Cert.SerialNumber) == 0 {
		t.Error("two CAs have the same serial number")
	}
}

func TestIssue(t *testing.T) {
	ca, _ := newCA(t)
	tests := []struct {
		name string
		leaf pki.Leaf
		// verify are the usages the certificate must verify for against
		// the CA; refuse those it must not.
		verify, refuse []x509.ExtKeyUsage
		ips, dns, uris []string
		wantErr        string
	}{
		{
			name:   "server",
			leaf:   pki.Leaf{CommonName: "coordinator", Hosts: []string{"10.0.0.1", "coord.example", "::1"}, Server: true, Validity: time.Hour},
			verify: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, refuse: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			ips: []string{"10.0.0.1", "::1"}, dns: []string{"coord.example"},
		},
		{
			name:   "member",
			leaf:   pki.Leaf{CommonName: "m", Hosts: []string{"10.0.0.2"}, URIs: []string{"muster://member/ns/g/m"}, Client: true, Validity: time.Hour},
			verify: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, refuse: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			ips: []string{"10.0.0.2"}, uris: []string{"muster://member/ns/g/m"},
		},
		{
			name:   "client in a group",
			leaf:   pki.Leaf{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}, Client: true, Validity: time.Hour},
			verify: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, refuse: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		},
		{
			name:   "both uses",
			leaf:   pki.Leaf{CommonName: "x", Hosts: []string{"x.example"}, Server: true, Client: true, Validity: time.Hour},
			verify: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			dns:    []string{"x.example"},
		},
		{name: "neither use", leaf: pki.Leaf{CommonName: "x", Validity: time.Hour}, wantErr: "neither server nor client"},
		{name: "bad URI", leaf: pki.Leaf{CommonName: "x", URIs: []string{"muster://member/%zz"}, Client: true, Validity: time.Hour}, wantErr: "%zz"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			certPEM, keyPEM, err := ca.Issue(tc.leaf)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Issue = %v, want an error naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			c := parse(t, certPEM)
			if c.IsCA {
				t.Error("a leaf certificate is a CA")
			}
			if kb, _ := pem.Decode(keyPEM); kb == nil {
				t.Fatalf("key is not PEM: %q", keyPEM)
			} else if k, err := x509.ParsePKCS8PrivateKey(kb.Bytes); err != nil {
				t.Fatalf("key: %v", err)
			} else if ek, ok := k.(*ecdsa.PrivateKey); !ok || ek.Curve != elliptic.P256() || !ek.PublicKey.Equal(c.PublicKey) {
				t.Errorf("key %T is not the certificate's ECDSA P-256 key", k)
			}
			for _, u := range tc.verify {
				if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
					t.Errorf("certificate does not verify for usage %v: %v", u, err)
				}
			}
			for _, u := range tc.refuse {
				if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{u}}); err == nil {
					t.Errorf("certificate verifies for usage %v, which it was not issued for", u)
				}
			}
			var ips, uris []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			for _, u := range c.URIs {
				uris = append(uris, u.String())
			}
			want := func(got, want []string, what string) {
				t.Helper()
				if !slices.Equal(got, want) {
					t.Errorf("%s = %q, want %q", what, got, want)
				}
			}
			want(ips, normIPs(tc.ips), "IP SANs")
			want(c.DNSNames, tc.dns, "DNS SANs")
			want(uris, tc.uris, "URI SANs")
			want(c.Subject.Organization, tc.leaf.Organization, "subject O")
			if c.Subject.CommonName != tc.leaf.CommonName {
				t.Errorf("subject CN = %q, want %q", c.Subject.CommonName, tc.leaf.CommonName)
			}
			for _, h := range tc.leaf.Hosts {
				if err := c.VerifyHostname(h); err != nil {
					t.Errorf("VerifyHostname(%q): %v", h, err)
				}
			}
		})
	}
}

func normIPs(ips []string) []string {
	var out []string
	for _, s := range ips {
		out = append(out, net.ParseIP(s).String())
	}
	return out
}

func TestIssuedByAnotherCADoesNotVerify(t *testing.T) {
	ca, _ := newCA(t)
	other, _ := newCA(t)
	certPEM, _, err := other.Issue(pki.Leaf{CommonName: "m", URIs: []string{"muster://member/ns/g/m"}, Client: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parse(t, certPEM).Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Fatal("a certificate of another CA verifies against ours")
	}
}

func TestLoadCA(t *testing.T) {
	dir := t.TempDir()
	ca, key := newCA(t)
	caCrt, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := pki.WriteFiles(caCrt, ca.PEM, caKey, key); err != nil {
		t.Fatal(err)
	}
	leafPEM, leafKey, err := ca.Issue(pki.Leaf{CommonName: "s", Hosts: []string{"127.0.0.1"}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	leafCrt, leafKeyFile := filepath.Join(dir, "s.crt"), filepath.Join(dir, "s.key")
	if err := pki.WriteFiles(leafCrt, leafPEM, leafKeyFile, leafKey); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}

	loaded, err := pki.LoadCA(caCrt, caKey)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if !loaded.Cert.Equal(ca.Cert) {
		t.Fatal("LoadCA read another certificate")
	}
	// The loaded CA signs what the original's pool verifies.
	c, _, err := loaded.Issue(pki.Leaf{CommonName: "m", Client: true, Validity: time.Hour})
	if err != nil {
		t.Fatalf("Issue with the loaded CA: %v", err)
	}
	if _, err := parse(t, c).Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("certificate of the loaded CA: %v", err)
	}

	for _, tc := range []struct {
		name, crt, key, want string
	}{
		{"missing certificate", filepath.Join(dir, "none.crt"), caKey, "none.crt"},
		{"missing key", caCrt, filepath.Join(dir, "none.key"), "none.key"},
		{"not PEM", garbage, caKey, "not PEM"},
		{"a leaf is no CA", leafCrt, leafKeyFile, "not a CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := pki.LoadCA(tc.crt, tc.key); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadCA = %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestWriteFiles(t *testing.T) {
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "x.crt"), filepath.Join(dir, "x.key")
	mode := func(p string) os.FileMode {
		t.Helper()
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode()
	}
	read := func(p string) string {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	t.Run("new files", func(t *testing.T) {
		if err := pki.WriteFiles(crt, []byte("cert-1"), key, []byte("key-1")); err != nil {
			t.Fatal(err)
		}
		if m := mode(key); m != 0o600 {
			t.Errorf("key mode %v, want 0600", m)
		}
		if m := mode(crt); m&0o600 != 0o600 || m&0o022 != 0 {
			t.Errorf("certificate mode %v, want 0644 (less the umask)", m)
		}
		if read(crt) != "cert-1" || read(key) != "key-1" {
			t.Errorf("files hold %q and %q", read(crt), read(key))
		}
	})
	t.Run("a readable key is replaced by a private one", func(t *testing.T) {
		if err := os.Chmod(key, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteFiles(crt, []byte("cert-2"), key, []byte("key-2")); err != nil {
			t.Fatal(err)
		}
		if m := mode(key); m != 0o600 {
			t.Errorf("key mode %v after rewriting a 0644 key, want 0600", m)
		}
		if read(key) != "key-2" || read(crt) != "cert-2" {
			t.Errorf("files hold %q and %q, want the new ones", read(crt), read(key))
		}
	})
	t.Run("never through a symlink", func(t *testing.T) {
		target := filepath.Join(dir, "elsewhere")
		if err := os.WriteFile(target, []byte("precious"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(key); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, key); err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteFiles(crt, []byte("cert-3"), key, []byte("key-3")); err != nil {
			t.Fatal(err)
		}
		if got := read(target); got != "precious" {
			t.Errorf("the symlink's target now holds %q: the key was written through the link", got)
		}
		if m := mode(key); !m.IsRegular() || m.Perm() != 0o600 {
			t.Errorf("key is %v, want a regular 0600 file", m)
		}
		if read(key) != "key-3" {
			t.Errorf("key holds %q, want key-3", read(key))
		}
	})
	t.Run("no temporary file left", func(t *testing.T) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".new") {
				t.Errorf("temporary file %s left behind", e.Name())
			}
		}
	})
}

// NewCAFiles and IssueFiles write what NewCA and Issue return as WriteFiles
// does: a CA that LoadCA reads back, and a pair that TLS loads and that
// verifies against the CA.
func TestNewCAFilesAndIssueFiles(t *testing.T) {
	dir := t.TempDir()
	caCrt, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	ca, err := pki.NewCAFiles("files-ca", time.Hour, caCrt, caKey)
	if err != nil {
		t.Fatalf("NewCAFiles: %v", err)
	}
	loaded, err := pki.LoadCA(caCrt, caKey)
	if err != nil {
		t.Fatalf("LoadCA of NewCAFiles' files: %v", err)
	}
	if !loaded.Cert.Equal(ca.Cert) || !bytes.Equal(loaded.PEM, ca.PEM) || ca.Cert.Subject.CommonName != "files-ca" {
		t.Error("NewCAFiles returned another CA than it wrote")
	}

	crt, key := filepath.Join(dir, "s.crt"), filepath.Join(dir, "s.key")
	if err := ca.IssueFiles(pki.Leaf{CommonName: "s", Hosts: []string{"127.0.0.1", "localhost"}, Server: true, Validity: time.Hour}, crt, key); err != nil {
		t.Fatalf("IssueFiles: %v", err)
	}
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatalf("the issued pair: %v", err)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"127.0.0.1", "localhost"} {
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: h, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("issued certificate for %s: %v", h, err)
		}
	}
	for _, f := range []string{caKey, key} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("key %s: mode %v (err %v), want 0600", f, st.Mode(), err)
		}
	}

	if err := ca.IssueFiles(pki.Leaf{CommonName: "x", Validity: time.Hour}, crt, key); err == nil || !strings.Contains(err.Error(), "neither server nor client") {
		t.Errorf("IssueFiles of a leaf for no use = %v, want Issue's error", err)
	}
	if _, err := pki.NewCAFiles("x", time.Hour, filepath.Join(dir, "none", "ca.crt"), filepath.Join(dir, "none", "ca.key")); err == nil {
		t.Error("NewCAFiles into a missing directory succeeded")
	}
}
