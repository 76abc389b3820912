package kubectlmuster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/muster-dev/muster/podapi"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// coordinatorFlags say where the coordinator is when its ConfigMap does
// not (or should not) decide.
type coordinatorFlags struct {
	address    string // host:port to dial instead of the published address
	namespace  string // where ConfigMap muster-coordinator is
	caFile     string // PEM CA instead of the published one
	serverName string // the name the coordinator's certificate must carry
	timeout    time.Duration
}

// coordinator is a connection to the coordinator with the user's own
// credentials.
type coordinator struct {
	conn   *grpc.ClientConn
	client musterv1.RendezvousClient
	addr   string // what was dialled, for messages
	from   string // where the address came from, for messages
}

func (c *coordinator) Close() error { return c.conn.Close() }

// published is what the coordinator's ConfigMap says.
type published struct {
	address string
	ca      []byte
	from    string
}

// discover reads ConfigMap muster-coordinator in the coordinator's
// namespace with the user's credentials.
func discover(ctx context.Context, cs kubernetes.Interface, ns string) (published, error) {
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, podapi.CoordinatorConfigMap, metav1.GetOptions{})
	where := fmt.Sprintf("ConfigMap %s/%s", ns, podapi.CoordinatorConfigMap)
	switch {
	case apierrors.IsNotFound(err):
		return published{}, fmt.Errorf("%s not found: is muster installed in namespace %s? (--coordinator-namespace names another; --coordinator host:port dials one directly)", where, ns)
	case apierrors.IsForbidden(err):
		return published{}, fmt.Errorf("%s: you may not read it (muster's chart lets every authenticated user; or give --coordinator host:port and --coordinator-ca): %v", where, err)
	case err != nil:
		return published{}, fmt.Errorf("read %s: %w", where, err)
	}
	p := published{address: cm.Data[podapi.CoordinatorAddressKey], ca: []byte(cm.Data[podapi.CoordinatorCAKey]), from: where}
	if p.address == "" {
		return published{}, fmt.Errorf("%s has no %q: the coordinator writes it at start (--publish-namespace)", where, podapi.CoordinatorAddressKey)
	}
	return p, nil
}

// connect dials the coordinator: the published address (or --coordinator),
// verified with the published CA (or --coordinator-ca), as the user of
// the kubeconfig (its client certificate, or its token).
func connect(ctx context.Context, cfg *rest.Config, cs kubernetes.Interface, f coordinatorFlags) (*coordinator, error) {
	var p published
	if f.address == "" || f.caFile == "" {
		var err error
		if p, err = discover(ctx, cs, f.namespace); err != nil {
			if f.address == "" {
				return nil, err
			}
			p = published{} // --coordinator given: a plaintext dev coordinator needs no CA
		}
	}
	addr, from := p.address, p.from
	if f.address != "" {
		addr, from = f.address, "--coordinator"
	}
	ca := p.ca
	if f.caFile != "" {
		b, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, fmt.Errorf("--coordinator-ca: %w", err)
		}
		ca = b
	}
	var opts []grpc.DialOption
	if len(strings.TrimSpace(string(ca))) == 0 {
		// A coordinator without TLS (a loopback dev coordinator): no
		// credentials cross the connection.
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		tc, err := clientTLS(cfg, ca, addr, p.address, f.serverName)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		tok, err := newTokenSource(cfg)
		if err != nil {
			return nil, err
		}
		if tok != nil {
			opts = append(opts, grpc.WithPerRPCCredentials(tok))
		}
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("coordinator %s (from %s): %w", addr, from, err)
	}
	return &coordinator{conn: conn, client: musterv1.NewRendezvousClient(conn), addr: addr, from: from}, nil
}

// clientTLS is the kubeconfig's client certificate (if any) with the
// coordinator's CA and name.
func clientTLS(cfg *rest.Config, ca []byte, dial, publishedAddr, serverName string) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, errors.New("the coordinator's CA holds no PEM certificate")
	}
	base, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("the kubeconfig's TLS settings: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	if base != nil {
		tc.Certificates, tc.GetClientCertificate = base.Certificates, base.GetClientCertificate
	}
	// The certificate names the address agents dial (the published one),
	// also when the connection goes elsewhere (a port-forward).
	switch {
	case serverName != "":
		tc.ServerName = serverName
	case publishedAddr != "":
		tc.ServerName = hostOf(publishedAddr)
	default:
		tc.ServerName = hostOf(dial)
	}
	return tc, nil
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// tokenSource sends the kubeconfig's bearer token (a token, a token file,
// an exec or auth-provider plugin: whatever client-go would send the
// apiserver) with every call.
type tokenSource struct {
	rt http.RoundTripper
	mu sync.Mutex
}

// newTokenSource returns nil when the kubeconfig authenticates with a
// client certificate only.
func newTokenSource(cfg *rest.Config) (*tokenSource, error) {
	if cfg.BearerToken == "" && cfg.BearerTokenFile == "" && cfg.ExecProvider == nil && cfg.AuthProvider == nil {
		return nil, nil
	}
	rt, err := rest.HTTPWrappersForConfig(cfg, captureAuth{})
	if err != nil {
		return nil, fmt.Errorf("the kubeconfig's credentials: %w", err)
	}
	return &tokenSource{rt: rt}, nil
}

// captureAuth answers the request client-go's wrappers prepared with the
// Authorization header they set, sending nothing anywhere.
type captureAuth struct{}

func (captureAuth) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{"Authorization": r.Header.Values("Authorization")}, Body: http.NoBody, Request: r}, nil
}

func (t *tokenSource) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://coordinator.invalid/", nil)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	resp, err := t.rt.RoundTrip(req)
	t.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("the kubeconfig's token: %w", err)
	}
	if v := resp.Header.Get("Authorization"); v != "" {
		return map[string]string{"authorization": v}, nil
	}
	return nil, nil
}

// RequireTransportSecurity: a token never crosses a plaintext connection.
func (t *tokenSource) RequireTransportSecurity() bool { return true }

// explain turns a coordinator's error into what the user can do about it.
func (c *coordinator) explain(err error, what string) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", what, err)
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded:
		return fmt.Errorf("%s: cannot reach the coordinator at %s (from %s): %s\nFrom outside the cluster's network: kubectl port-forward -n %s svc/muster-coordinator 7070, then --coordinator 127.0.0.1:7070", what, c.addr, c.from, st.Message(), podapi.CoordinatorNamespace)
	case codes.Unauthenticated:
		return fmt.Errorf("%s: the coordinator did not accept your credentials: %s", what, st.Message())
	case codes.PermissionDenied:
		return fmt.Errorf("%s: forbidden: %s", what, st.Message())
	case codes.NotFound:
		return fmt.Errorf("%s: %s", what, st.Message())
	}
	return fmt.Errorf("%s: %s (%s)", what, st.Message(), st.Code())
}
