package rendezvous

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/pki"
)

// PKI is what a bare-host installation with client certificates has (issue
// #13): a CA, the coordinator's serving certificate for 127.0.0.1, and one
// certificate per member naming it (auth.MemberURI) and the address it may
// announce. Keys are ECDSA P-256, as `coordinator certs` makes them.
type PKI struct {
	CA *pki.CA
	// Dir holds ca.crt, server.crt/.key and the member files AgentFlags
	// writes.
	Dir                           string
	CAFile, ServerCert, ServerKey string
	pool                          *x509.CertPool
}

// NewPKI makes a CA and the coordinator's certificate in a test directory.
func NewPKI(tb testing.TB) *PKI {
	tb.Helper()
	ca, _, err := pki.NewCA("muster-bench-ca", 24*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	p := &PKI{CA: ca, Dir: tb.TempDir(), pool: x509.NewCertPool()}
	p.pool.AddCert(ca.Cert)
	p.CAFile = filepath.Join(p.Dir, "ca.crt")
	if err := os.WriteFile(p.CAFile, ca.PEM, 0o644); err != nil {
		tb.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(pki.Leaf{CommonName: "muster-coordinator", Hosts: []string{"127.0.0.1"}, Server: true, Validity: 24 * time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	p.ServerCert, p.ServerKey = filepath.Join(p.Dir, "server.crt"), filepath.Join(p.Dir, "server.key")
	if err := pki.WriteFiles(p.ServerCert, certPEM, p.ServerKey, keyPEM); err != nil {
		tb.Fatal(err)
	}
	return p
}

// CoordinatorFlags serve the gRPC port with TLS and require members to
// present a certificate signed by the CA.
func (p *PKI) CoordinatorFlags() []string {
	return []string{"--tls-cert", p.ServerCert, "--tls-key", p.ServerKey, "--client-ca", p.CAFile}
}

// Member issues the certificate of member of group namespace/group that
// may announce addr, PEM encoded.
func (p *PKI) Member(tb testing.TB, namespace, group, member, addr string) (certPEM, keyPEM []byte) {
	tb.Helper()
	certPEM, keyPEM, err := p.CA.Issue(pki.Leaf{CommonName: member, Hosts: []string{addr},
		URIs: []string{auth.MemberURI(namespace, group, member)}, Client: true, Validity: 24 * time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	return certPEM, keyPEM
}

// AgentFlags writes member's certificate and key under Dir and returns the
// agent flags that use them (--ca, --cert, --key).
func (p *PKI) AgentFlags(tb testing.TB, namespace, group, member, addr string) []string {
	tb.Helper()
	certPEM, keyPEM := p.Member(tb, namespace, group, member, addr)
	base := filepath.Join(p.Dir, fmt.Sprintf("%s.%s.%s", namespace, group, member))
	if err := pki.WriteFiles(base+".crt", certPEM, base+".key", keyPEM); err != nil {
		tb.Fatal(err)
	}
	return []string{"--ca", p.CAFile, "--cert", base + ".crt", "--key", base + ".key"}
}

// ClientTLS is the TLS configuration an agent dials with (agent
// --ca/--cert/--key): the coordinator verified with the CA, the member's
// certificate presented. certPEM nil: no client certificate.
func (p *PKI) ClientTLS(tb testing.TB, certPEM, keyPEM []byte) *tls.Config {
	tb.Helper()
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: p.pool}
	if certPEM != nil {
		kp, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			tb.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	return tc
}

// SecureCoordinator runs bin/coordinator as Coordinator does, with TLS on
// its gRPC port and client certificates signed by p's CA required of
// members, and returns its address once it answers over TLS.
func SecureCoordinator(tb testing.TB, p *PKI, extra ...string) string {
	tb.Helper()
	addr, _ := secureCoordinatorProc(tb, p, extra...)
	return addr
}

func secureCoordinatorProc(tb testing.TB, p *PKI, extra ...string) (string, *Proc) {
	tb.Helper()
	addr, proc := startCoordinator(tb, append(p.CoordinatorFlags(), extra...)...)
	if err := waitServingTLS(addr, p.ClientTLS(tb, nil, nil), 30*time.Second, proc.Done()); err != nil {
		tb.Fatalf("%v\n%s", err, proc.Output())
	}
	return addr, proc
}

// waitServingTLS waits until the gRPC health service at addr says SERVING
// over TLS (the health service answers callers without a certificate).
func waitServingTLS(addr string, tc *tls.Config, timeout time.Duration, exited <-chan struct{}) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return err
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("coordinator not serving over TLS at %s after %s: %v (status %v)", addr, timeout, err, resp.GetStatus())
		}
		select {
		case <-exited:
			return fmt.Errorf("coordinator exited before serving at %s", addr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
