package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/muster-dev/muster/pki"
)

// transportCredentials are how the agent dials the coordinator: TLS that
// verifies the coordinator (--ca, or the PEM the webhook puts in
// MUSTER_COORDINATOR_CA) with an optional client certificate (--cert and
// --key, bare hosts), plus the pod's token on every call (--token-file);
// plaintext only when none of them is given.
func (c *Config) transportCredentials() ([]grpc.DialOption, error) {
	if c.CAFile == "" && c.CAPEM == "" {
		if c.TokenFile != "" || c.CertFile != "" {
			return nil, errors.New("--token-file and --cert need TLS: give --ca (or MUSTER_COORDINATOR_CA) so that the coordinator is verified before credentials are sent")
		}
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, nil
	}
	pool := x509.NewCertPool()
	caPEM := []byte(c.CAPEM)
	if c.CAFile != "" {
		b, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		caPEM = b
	}
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("--ca (or MUSTER_COORDINATOR_CA) holds no PEM certificate")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	if c.CertFile != "" {
		kp := &pki.KeyPair{CertFile: c.CertFile, KeyFile: c.KeyFile}
		if _, err := kp.Get(); err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		// Re-read at each handshake when the file changed: a rotated
		// certificate takes effect at the next reconnect, no restart.
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp.Get() }
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}
	if c.TokenFile != "" {
		t := &tokenFile{path: c.TokenFile}
		if _, err := t.read(); err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithPerRPCCredentials(t))
	}
	return opts, nil
}

// tokenFile sends the token in path as a bearer token with every call,
// re-reading the file when it changes: the kubelet rewrites a projected
// token before it expires.
type tokenFile struct {
	path string

	mu    sync.Mutex
	mod   time.Time
	token string
}

func (t *tokenFile) read() (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, err := os.Stat(t.path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	if t.token != "" && st.ModTime().Equal(t.mod) {
		return t.token, nil
	}
	b, err := os.ReadFile(t.path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--token-file %s is empty", t.path)
	}
	t.token, t.mod = tok, st.ModTime()
	return tok, nil
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t *tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	tok, err := t.read()
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: a
// token never crosses the network in the clear.
func (t *tokenFile) RequireTransportSecurity() bool { return true }
