package coordinator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/pki"
)

// The gRPC port's handshake accepts a client certificate of --client-ca
// or of the cluster's client CA (kubectl users), and refuses any other,
// so auth.Cert sees only chains of those two; no certificate at all is
// fine (pods send tokens).
func TestServerTLSClientCAs(t *testing.T) {
	dir := t.TempDir()
	newCA := func(name string) *pki.CA {
		ca, _, err := pki.NewCA(name, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	members, kube, other := newCA("muster"), newCA("kubernetes"), newCA("other")
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := members.IssueFiles(pki.Leaf{CommonName: "coordinator", Hosts: []string{"127.0.0.1"}, Server: true, Validity: time.Hour}, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	client := func(ca *pki.CA, cn string) *tls.Certificate {
		certPEM, keyPEM, err := ca.Issue(pki.Leaf{CommonName: cn, Client: true, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &c
	}
	memberPool := x509.NewCertPool()
	memberPool.AddCert(members.Cert)
	users := &auth.KubeClientCA{Client: fake.NewClientset(&corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: auth.ClientCANamespace, Name: auth.ClientCAConfigMap},
		Data:       map[string]string{auth.ClientCAKey: string(kube.PEM)},
	}), Extra: members.PEM}
	if err := users.Load(context.Background()); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		users  *auth.KubeClientCA
		cert   *tls.Certificate
		wantOK bool
		// wantCN and issuer are the verified chain the server sees.
		wantCN, issuer string
	}{
		{name: "member certificate", users: users, cert: client(members, "host-0"), wantOK: true, wantCN: "host-0", issuer: "muster"},
		{name: "kubectl user certificate", users: users, cert: client(kube, "alice"), wantOK: true, wantCN: "alice", issuer: "kubernetes"},
		{name: "certificate of another CA", users: users, cert: client(other, "mallory")},
		{name: "no certificate (a pod's token)", users: users, wantOK: true},
		{name: "kubectl user certificate without the cluster's CA", cert: client(kube, "alice")},
		{name: "member certificate without the cluster's CA", cert: client(members, "host-0"), wantOK: true, wantCN: "host-0", issuer: "muster"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sc, err := serverTLS(certFile, keyFile, memberPool, tc.users)
			if err != nil {
				t.Fatal(err)
			}
			roots := x509.NewCertPool()
			roots.AddCert(members.Cert)
			cc := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
			if tc.cert != nil {
				// Sent whatever CAs the server names (a client picking by
				// them would send none of another CA's).
				cc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return tc.cert, nil }
			}
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			srv, cli := tls.Server(a, sc), tls.Client(b, cc)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				err := cli.HandshakeContext(ctx)
				if err == nil {
					// TLS 1.3: the server checks the client's certificate
					// after the client's handshake is done; read its verdict.
					_, err = cli.Read(make([]byte, 1))
				}
				done <- err
			}()
			serr := srv.HandshakeContext(ctx)
			if serr == nil {
				srv.Write([]byte{1})
			} else {
				srv.Close()
			}
			cerr := <-done
			if !tc.wantOK {
				if serr == nil {
					t.Fatalf("handshake accepted; want it refused (client: %v)", cerr)
				}
				return
			}
			if serr != nil || cerr != nil {
				t.Fatalf("handshake: server %v, client %v; want accepted", serr, cerr)
			}
			chains := srv.ConnectionState().VerifiedChains
			if tc.wantCN == "" {
				if len(chains) != 0 {
					t.Fatalf("verified chains %v without a client certificate", chains)
				}
				return
			}
			if len(chains) == 0 || chains[0][0].Subject.CommonName != tc.wantCN || chains[0][len(chains[0])-1].Subject.CommonName != tc.issuer {
				t.Fatalf("verified chains %v, want %s by %s", chains, tc.wantCN, tc.issuer)
			}
		})
	}
}
