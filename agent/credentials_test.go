package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/pki"
)

// testPKI writes a CA and a client certificate it signed into a temp dir.
type testPKI struct {
	dir                    string
	ca                     *pki.CA
	caFile, cert, key      string
	notPEM, missing, empty string
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	ca, caKey, err := pki.NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	p := &testPKI{dir: dir, ca: ca, caFile: filepath.Join(dir, "ca.crt"), cert: filepath.Join(dir, "m.crt"), key: filepath.Join(dir, "m.key"),
		notPEM: filepath.Join(dir, "not-pem"), missing: filepath.Join(dir, "missing"), empty: filepath.Join(dir, "empty")}
	if err := pki.WriteFiles(p.caFile, ca.PEM, filepath.Join(dir, "ca.key"), caKey); err != nil {
		t.Fatalf("write CA: %v", err)
	}
	p.issue(t, "m-1")
	putFile(t, p.notPEM, "this is not a certificate\n")
	putFile(t, p.empty, " \n")
	return p
}

// issue writes a fresh client certificate named cn to p.cert and p.key.
func (p *testPKI) issue(t *testing.T, cn string) {
	t.Helper()
	crt, key, err := p.ca.Issue(pki.Leaf{CommonName: cn, Hosts: []string{"10.0.0.2"}, Client: true, Validity: time.Hour})
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if err := pki.WriteFiles(p.cert, crt, p.key, key); err != nil {
		t.Fatalf("write client certificate: %v", err)
	}
}

func putFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// bump moves path's mtime by d, as a rewrite at another time would.
func bump(t *testing.T, path string, d time.Duration) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	mt := st.ModTime().Add(d)
	if err := os.Chtimes(path, mt, mt); err != nil {
		t.Fatal(err)
	}
}

func TestTransportCredentials(t *testing.T) {
	p := newTestPKI(t)
	caPEM := string(p.ca.PEM)
	token := filepath.Join(p.dir, "token")
	putFile(t, token, "tok-1\n")
	tests := []struct {
		name string
		cfg  Config
		// wantErr are substrings of the error; else wantOpts options.
		wantErr  []string
		wantOpts int
	}{
		{name: "nothing: plaintext", cfg: Config{}, wantOpts: 1},
		{name: "token without CA", cfg: Config{TokenFile: token}, wantErr: []string{"--token-file", "need TLS", "--ca"}},
		{name: "certificate without CA", cfg: Config{CertFile: p.cert, KeyFile: p.key}, wantErr: []string{"--cert", "need TLS", "--ca"}},
		{name: "CA file is not PEM", cfg: Config{CAFile: p.notPEM}, wantErr: []string{"--ca", "no PEM certificate"}},
		{name: "CA PEM is not PEM", cfg: Config{CAPEM: "garbage"}, wantErr: []string{"MUSTER_COORDINATOR_CA", "no PEM certificate"}},
		{name: "CA file missing", cfg: Config{CAFile: p.missing}, wantErr: []string{"--ca", "no such file"}},
		{name: "CA file", cfg: Config{CAFile: p.caFile}, wantOpts: 1},
		{name: "CA PEM", cfg: Config{CAPEM: caPEM}, wantOpts: 1},
		{
			// The file wins over the environment's PEM.
			name: "CA file over a bad CA PEM", cfg: Config{CAFile: p.caFile, CAPEM: "garbage"}, wantOpts: 1,
		},
		{name: "CA and token", cfg: Config{CAPEM: caPEM, TokenFile: token}, wantOpts: 2},
		{name: "CA, certificate and token", cfg: Config{CAFile: p.caFile, CertFile: p.cert, KeyFile: p.key, TokenFile: token}, wantOpts: 2},
		{name: "token file missing", cfg: Config{CAFile: p.caFile, TokenFile: p.missing}, wantErr: []string{"--token-file", "no such file"}},
		{name: "token file empty", cfg: Config{CAFile: p.caFile, TokenFile: p.empty}, wantErr: []string{"--token-file", "is empty"}},
		{name: "certificate not PEM", cfg: Config{CAFile: p.caFile, CertFile: p.notPEM, KeyFile: p.key}, wantErr: []string{"--cert", "--key"}},
		{name: "certificate missing", cfg: Config{CAFile: p.caFile, CertFile: p.missing, KeyFile: p.key}, wantErr: []string{"--cert", "no such file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts, err := tc.cfg.transportCredentials()
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("transportCredentials = %d options, want an error naming %q", len(opts), tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not name %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("transportCredentials: %v", err)
			}
			if len(opts) != tc.wantOpts {
				t.Errorf("transportCredentials = %d dial options, want %d", len(opts), tc.wantOpts)
			}
		})
	}
}

func TestTokenFileFollowsRewrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	putFile(t, path, "tok-1\n")
	tf := &tokenFile{path: path}
	if !tf.RequireTransportSecurity() {
		t.Fatal("RequireTransportSecurity = false: the token would be sent in the clear")
	}
	want := func(tok string) {
		t.Helper()
		md, err := tf.GetRequestMetadata(context.Background())
		if err != nil {
			t.Fatalf("GetRequestMetadata: %v", err)
		}
		if got := md["authorization"]; got != "Bearer "+tok {
			t.Fatalf("authorization = %q, want %q", got, "Bearer "+tok)
		}
	}
	want("tok-1")

	// The kubelet rewrites the token before it expires.
	putFile(t, path, "tok-2")
	bump(t, path, time.Hour)
	want("tok-2")

	// Unchanged file: the token read before, whatever the contents (no
	// read per call).
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	putFile(t, path, "tok-x")
	if err := os.Chtimes(path, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	want("tok-2")

	// Another rewrite, earlier in time (a clock step back): still a change.
	putFile(t, path, "tok-3")
	bump(t, path, -2*time.Hour)
	want("tok-3")

	// A vanished file is an error, not the stale token.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if md, err := tf.GetRequestMetadata(context.Background()); err == nil || !strings.Contains(err.Error(), "--token-file") {
		t.Fatalf("GetRequestMetadata with the file gone = %v, %v; want an error naming --token-file", md, err)
	}
}

func TestClientKeyPairFollowsRotation(t *testing.T) {
	p := newTestPKI(t)
	kp := &pki.KeyPair{CertFile: p.cert, KeyFile: p.key}
	cn := func() string {
		t.Helper()
		c, err := kp.Get()
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if c.Leaf == nil {
			t.Fatal("certificate without its parsed leaf")
		}
		return c.Leaf.Subject.CommonName
	}
	if got := cn(); got != "m-1" {
		t.Fatalf("certificate %q, want m-1", got)
	}
	p.issue(t, "m-2")
	bump(t, p.cert, time.Hour)
	if got := cn(); got != "m-2" {
		t.Fatalf("after rotation: certificate %q, want m-2", got)
	}
	// A half-written rotation keeps the last good pair.
	putFile(t, p.cert, "half")
	bump(t, p.cert, 2*time.Hour)
	if got := cn(); got != "m-2" {
		t.Fatalf("after a bad rewrite: certificate %q, want m-2 kept", got)
	}
}

// TestTransportCredentialsReachTheCoordinator dials a TLS server with the
// options: the coordinator is verified with the CA, and the token and
// client certificate arrive.
func TestTransportCredentialsReachTheCoordinator(t *testing.T) {
	p := newTestPKI(t)
	token := filepath.Join(p.dir, "token")
	putFile(t, token, "tok-1\n")
	srvCrt, srvKey, err := p.ca.Issue(pki.Leaf{CommonName: "coordinator", Hosts: []string{"127.0.0.1"}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(srvCrt, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.ca.PEM)
	type seen struct{ auth, client string }
	calls := make(chan seen, 10)
	s := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{kp}, ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven})),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			var c seen
			md, _ := metadata.FromIncomingContext(ctx)
			if v := md.Get("authorization"); len(v) > 0 {
				c.auth = v[0]
			}
			if pr, ok := peer.FromContext(ctx); ok {
				if ti, ok := pr.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
					c.client = ti.State.VerifiedChains[0][0].Subject.CommonName
				}
			}
			calls <- c
			return h(ctx, req)
		}))
	healthpb.RegisterHealthServer(s, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	otherCA, _, err := pki.NewCA("other-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		cfg  Config
		want *seen // nil: the call must fail
	}{
		{name: "CA, token and certificate", cfg: Config{CAFile: p.caFile, TokenFile: token, CertFile: p.cert, KeyFile: p.key}, want: &seen{auth: "Bearer tok-1", client: "m-1"}},
		{name: "CA PEM and token", cfg: Config{CAPEM: string(p.ca.PEM), TokenFile: token}, want: &seen{auth: "Bearer tok-1"}},
		{name: "a CA that did not sign the coordinator", cfg: Config{CAPEM: string(otherCA.PEM), TokenFile: token}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts, err := tc.cfg.transportCredentials()
			if err != nil {
				t.Fatalf("transportCredentials: %v", err)
			}
			cc, err := grpc.NewClient(lis.Addr().String(), opts...)
			if err != nil {
				t.Fatalf("grpc.NewClient: %v", err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
			if tc.want == nil {
				if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "certificate") {
					t.Fatalf("call to a coordinator the CA did not sign = %v, want Unavailable naming the certificate", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			select {
			case got := <-calls:
				if got != *tc.want {
					t.Errorf("the coordinator saw %+v, want %+v", got, *tc.want)
				}
			default:
				t.Fatal("the call succeeded but the server's interceptor saw nothing")
			}
		})
	}
	select {
	case got := <-calls:
		t.Errorf("a call reached the coordinator that should not have: %+v", got)
	default:
	}
}
