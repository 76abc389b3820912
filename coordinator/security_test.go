package coordinator

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// securityFiles are existing files standing in for certificates: Validate
// only checks that the flags' files exist (loading them is Start's).
type securityFiles struct{ cert, key, ca, missing string }

func newSecurityFiles(t *testing.T) securityFiles {
	t.Helper()
	dir := t.TempDir()
	f := securityFiles{cert: filepath.Join(dir, "tls.crt"), key: filepath.Join(dir, "tls.key"), ca: filepath.Join(dir, "ca.crt"), missing: filepath.Join(dir, "missing.crt")}
	for _, p := range []string{f.cert, f.key, f.ca} {
		if err := os.WriteFile(p, []byte("pem"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func TestValidateSecurity(t *testing.T) {
	f := newSecurityFiles(t)
	tests := []struct {
		name string
		mut  func(*Config)
		// want lists what the refusal names; nil: accepted.
		want []string
	}{
		{name: "loopback with nothing", mut: func(c *Config) {}},
		{name: "localhost with nothing", mut: func(c *Config) { c.Listen = "localhost:7070" }},
		{name: "IPv6 loopback with nothing", mut: func(c *Config) { c.Listen = "[::1]:0" }},
		{name: "127.0.0.2 is loopback too", mut: func(c *Config) { c.Listen = "127.0.0.2:7070" }},
		{
			name: "all interfaces with nothing",
			mut:  func(c *Config) { c.Listen = "0.0.0.0:7070" },
			want: []string{"--listen 0.0.0.0:7070", "beyond loopback", "nothing authenticates", "--tls-cert", "--client-ca", "--kubeconfig", "--insecure"},
		},
		{name: "empty host is every interface", mut: func(c *Config) { c.Listen = ":7070" }, want: []string{"nothing authenticates", "--insecure"}},
		{name: "IPv6 any with nothing", mut: func(c *Config) { c.Listen = "[::]:7070" }, want: []string{"nothing authenticates"}},
		{name: "a host name is not known to be loopback", mut: func(c *Config) { c.Listen = "coord.example:7070" }, want: []string{"nothing authenticates"}},
		{name: "--insecure beyond loopback", mut: func(c *Config) { c.Listen = "0.0.0.0:7070"; c.Insecure = true }},
		{
			// TLS only encrypts: without --client-ca or Kubernetes tokens
			// nobody is authenticated.
			name: "TLS without anything that authenticates",
			mut:  func(c *Config) { c.Listen = "10.0.0.1:7070"; c.TLSCert, c.TLSKey = f.cert, f.key },
			want: []string{"nothing authenticates", "--client-ca"},
		},
		{
			name: "client CA without TLS",
			mut:  func(c *Config) { c.Listen = "10.0.0.1:7070"; c.ClientCA = f.ca },
			want: []string{"--client-ca needs --tls-cert and --tls-key"},
		},
		{
			name: "client CA without TLS even on loopback",
			mut:  func(c *Config) { c.ClientCA = f.ca },
			want: []string{"--client-ca needs --tls-cert"},
		},
		{
			name: "mTLS beyond loopback",
			mut:  func(c *Config) { c.Listen = "0.0.0.0:7070"; c.TLSCert, c.TLSKey, c.ClientCA = f.cert, f.key, f.ca },
		},
		{
			name: "Kubernetes tokens without TLS",
			mut:  func(c *Config) { c.Listen = "0.0.0.0:7070"; c.Kubeconfig = "/kubeconfig" },
			want: []string{"without TLS", "in the clear", "--tls-cert", "--insecure"},
		},
		{
			name: "in-cluster tokens without TLS",
			mut:  func(c *Config) { c.Listen = "0.0.0.0:7070"; c.InCluster = true },
			want: []string{"without TLS"},
		},
		{
			// The deployment owns the webhook's certificates and gives the
			// gRPC port none: plaintext.
			name: "in-cluster with the deployment's webhook certificates and no --tls-cert",
			mut: func(c *Config) {
				c.Listen, c.InCluster, c.WebhookListen, c.WebhookTLSDir = "0.0.0.0:7070", true, "0.0.0.0:8443", "/etc/muster/webhook-tls"
			},
			want: []string{"without TLS"},
		},
		{
			name: "Kubernetes tokens over TLS",
			mut:  func(c *Config) { c.Listen = "0.0.0.0:7070"; c.InCluster = true; c.TLSCert, c.TLSKey = f.cert, f.key },
		},
		{
			// With its own webhook certificates the coordinator issues its
			// gRPC certificate itself (prepareTLS): TLS without --tls-cert.
			name: "Kubernetes with the coordinator's own webhook certificates",
			mut: func(c *Config) {
				c.Listen, c.Kubeconfig, c.WebhookListen = "10.0.0.1:7070", "/kubeconfig", "127.0.0.1:8443"
			},
		},
		{name: "--tls-cert without --tls-key", mut: func(c *Config) { c.TLSCert = f.cert }, want: []string{"--tls-cert and --tls-key go together"}},
		{name: "--tls-key without --tls-cert", mut: func(c *Config) { c.TLSKey = f.key }, want: []string{"--tls-cert and --tls-key go together"}},
		{
			name: "--tls-cert that does not exist",
			mut:  func(c *Config) { c.TLSCert, c.TLSKey = f.missing, f.key },
			want: []string{"--tls-cert " + f.missing, "no such file"},
		},
		{
			name: "--client-ca that does not exist",
			mut:  func(c *Config) { c.TLSCert, c.TLSKey, c.ClientCA = f.cert, f.key, f.missing },
			want: []string{"--client-ca " + f.missing},
		},
		{name: "--etcd-cert without --etcd-key", mut: func(c *Config) { c.EtcdEndpoints = []string{"https://e:2379"}; c.EtcdCert = f.cert }, want: []string{"--etcd-cert and --etcd-key"}},
		{name: "etcd TLS without an external etcd", mut: func(c *Config) { c.EtcdCACert = f.ca }, want: []string{"--etcd-endpoints"}},
		{name: "etcd TLS for an external etcd", mut: func(c *Config) {
			c.EtcdEndpoints = []string{"https://e:2379"}
			c.EtcdCACert, c.EtcdCert, c.EtcdKey = f.ca, f.cert, f.key
		}},
		{name: "negative rate limit", mut: func(c *Config) { c.RateLimit = -1 }, want: []string{"--rate-limit"}},
		{name: "tiny messages", mut: func(c *Config) { c.MaxMessageBytes = 100 }, want: []string{"--max-message-bytes 100"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mut(&c)
			err := c.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate() = %v, want accepted", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want an error naming %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, does not name %q", err, w)
				}
			}
		})
	}
}

func TestLoopbackOnly(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7070":       true,
		"127.1.2.3:0":          true,
		"[::1]:7070":           true,
		"localhost:7070":       true,
		"0.0.0.0:7070":         false,
		":7070":                false,
		"[::]:7070":            false,
		"10.0.0.1:7070":        false,
		"localhost.evil:1":     false,
		"127.0.0.1":            false, // no port: not an address Validate accepts
		"[::ffff:127.0.0.1]:1": true,
	} {
		if got := loopbackOnly(addr); got != want {
			t.Errorf("loopbackOnly(%q) = %v, want %v", addr, got, want)
		}
	}
}
