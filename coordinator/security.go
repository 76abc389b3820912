package coordinator

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/coordinator/webhook"
	"github.com/muster-dev/muster/pki"
)

// validateSecurity checks the TLS and authentication flags; a coordinator
// that would take anyone's word must say so (--insecure) unless it
// listens on loopback only.
func (c *Config) validateSecurity() error {
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key go together: give both (the gRPC port's certificate and key) or neither")
	}
	if c.ClientCA != "" && c.TLSCert == "" {
		return errors.New("--client-ca needs --tls-cert and --tls-key: client certificates are checked in the TLS handshake")
	}
	for _, f := range []struct{ flag, path string }{{"--tls-cert", c.TLSCert}, {"--tls-key", c.TLSKey}, {"--client-ca", c.ClientCA},
		{"--etcd-cacert", c.EtcdCACert}, {"--etcd-cert", c.EtcdCert}, {"--etcd-key", c.EtcdKey}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s %s: %w", f.flag, f.path, err)
		}
	}
	if (c.EtcdCert == "") != (c.EtcdKey == "") {
		return errors.New("--etcd-cert and --etcd-key go together: give both or neither")
	}
	if (c.EtcdCACert != "" || c.EtcdCert != "") && len(c.EtcdEndpoints) == 0 {
		return errors.New("--etcd-cacert/--etcd-cert are for an external etcd: give --etcd-endpoints too")
	}
	if c.RateLimit < 0 || c.RateBurst < 0 {
		return fmt.Errorf("--rate-limit %v / --rate-burst %d: negative", c.RateLimit, c.RateBurst)
	}
	if c.MaxMessageBytes < 1024 {
		return fmt.Errorf("--max-message-bytes %d is too small: the largest agent request is a few KiB; give at least 1024", c.MaxMessageBytes)
	}
	if c.Insecure || loopbackOnly(c.Listen) {
		return nil
	}
	if c.ClientCA == "" && c.Kubeconfig == "" && !c.InCluster {
		return fmt.Errorf("--listen %s reaches beyond loopback and nothing authenticates callers: anyone who reaches the port could act as any member. Give --tls-cert, --tls-key and --client-ca (bare hosts), or --kubeconfig/--in-cluster (pods' service-account tokens), or --insecure to accept that", c.Listen)
	}
	if c.TLSCert == "" && !c.makesOwnTLS() {
		return fmt.Errorf("--listen %s reaches beyond loopback without TLS: tokens would cross the network in the clear. Give --tls-cert and --tls-key, or --insecure to accept that", c.Listen)
	}
	return nil
}

// makesOwnTLS reports whether the coordinator issues its gRPC certificate
// itself (prepareTLS): connected to Kubernetes, running its own webhook
// certificates and given none for the gRPC port, it serves TLS from the
// webhook's CA.
func (c *Config) makesOwnTLS() bool {
	return c.TLSCert == "" && !c.Insecure && c.WebhookListen != "" && c.WebhookTLSDir == "" && (c.Kubeconfig != "" || c.InCluster)
}

// loopbackOnly reports whether addr's host is a loopback IP or localhost.
func loopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// securityOptions returns the gRPC server options for TLS, authentication,
// rate limits and message size, and says in the log what is on.
func (c *Coordinator) securityOptions(ctx context.Context, log *slog.Logger) ([]grpc.ServerOption, *auth.Kube, error) {
	cfg := c.cfg
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(cfg.MaxMessageBytes)}
	chain := &auth.Chain{AllowAnonymous: cfg.Insecure}
	if c.kube != nil {
		chain.Kube = auth.NewKube(c.kube, cfg.TokenAudience)
	}
	if cfg.TLSCert != "" {
		var members *x509.CertPool
		var membersPEM []byte
		if cfg.ClientCA != "" {
			pool, err := LoadCertPool(cfg.ClientCA)
			if err != nil {
				return nil, nil, fmt.Errorf("--client-ca: %w", err)
			}
			members = pool
			membersPEM, _ = os.ReadFile(cfg.ClientCA)
		}
		users := c.kubeClientCA(ctx, membersPEM, log)
		tc, err := serverTLS(cfg.TLSCert, cfg.TLSKey, members, users)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
		switch {
		case users != nil:
			chain.Cert = &auth.Cert{Members: members, Users: users.Pool}
		case members != nil:
			chain.Cert = &auth.Cert{Members: members}
		}
	}
	if chain.Cert == nil && chain.Kube == nil && loopbackOnly(cfg.Listen) {
		// Nothing to authenticate with: on loopback only this machine's
		// users reach the port (the bare-host quick start, tests).
		chain.AllowAnonymous = true
	}
	var lim *auth.Limiter
	if cfg.RateLimit > 0 {
		lim = auth.NewLimiter(cfg.RateLimit, max(cfg.RateBurst, 1))
	}
	opts = append(opts, auth.Interceptors(chain, lim)...)
	log.Info("coordinator security", "tls", cfg.TLSCert != "", "client_certificates", chain.Cert != nil,
		"kubernetes_tokens", chain.Kube != nil, "token_audience", cfg.TokenAudience, "anonymous_callers", chain.AllowAnonymous,
		"rate_limit_per_identity", cfg.RateLimit, "max_message_bytes", cfg.MaxMessageBytes)
	if chain.AllowAnonymous {
		log.Warn("callers are not authenticated: anyone who reaches " + cfg.Listen + " may act as any member of any group (see docs/security.md)")
	}
	return opts, chain.Kube, nil
}

// serverTLS loads the gRPC port's certificate (re-read from disk at each
// handshake when it changes, so a rotated certificate needs no restart)
// and, with members (--client-ca) or users (the cluster's client CA),
// verifies client certificates when sent.
func serverTLS(certFile, keyFile string, members *x509.CertPool, users *auth.KubeClientCA) (*tls.Config, error) {
	kp := &pki.KeyPair{CertFile: certFile, KeyFile: keyFile}
	if _, err := kp.Get(); err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return kp.Get() }}
	if members == nil && users == nil {
		return tc, nil
	}
	// VerifyClientCertIfGiven: pods authenticate with tokens over
	// server-only TLS; a certificate, when sent, must verify against one
	// of the CAs (auth.Cert tells which).
	tc.ClientAuth = tls.VerifyClientCertIfGiven
	tc.ClientCAs = members
	if users == nil {
		return tc, nil
	}
	tc.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := tc.Clone()
		c.GetConfigForClient = nil
		c.ClientCAs = users.Combined()
		return c, nil
	}
	return tc, nil
}

// kubeClientCA reads the cluster's client CA, so that people can call
// with their kubeconfig's client certificate (kubectl muster), and keeps
// it fresh; nil when not connected to Kubernetes or the CA cannot be read
// (said in the log: such people can still use a token).
func (c *Coordinator) kubeClientCA(ctx context.Context, membersPEM []byte, log *slog.Logger) *auth.KubeClientCA {
	if c.kube == nil {
		return nil
	}
	k := &auth.KubeClientCA{Client: c.kube, Refresh: 5 * time.Minute, Extra: membersPEM}
	if err := k.Load(ctx); err != nil {
		log.Warn("kubectl users with client certificates cannot call the coordinator (users with tokens can): the cluster's client CA is not readable; grant get on it (Role extension-apiserver-authentication-reader in kube-system)", "err", err)
		return nil
	}
	go k.Run(ctx, log)
	return k
}

// LoadCertPool reads PEM certificates from file.
func LoadCertPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// etcdTLS is the client TLS for an external etcd, or nil.
func etcdTLS(cfg Config) (*tls.Config, error) {
	if cfg.EtcdCACert == "" && cfg.EtcdCert == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.EtcdCACert != "" {
		pool, err := LoadCertPool(cfg.EtcdCACert)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cacert: %w", err)
		}
		tc.RootCAs = pool
	}
	if cfg.EtcdCert != "" {
		c, err := tls.LoadX509KeyPair(cfg.EtcdCert, cfg.EtcdKey)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cert/--etcd-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}

// gossipSecret returns the secret every replica derives gossip keys from,
// making it once (the first replica to start wins the create).
func gossipSecret(ctx context.Context, cli *clientv3.Client, prefix string) ([]byte, error) {
	key := path.Dir(strings.TrimSuffix(prefix, "/")) + "/secrets/gossip"
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(secret))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return nil, fmt.Errorf("gossip secret %s in etcd: %w", key, err)
	}
	if resp.Succeeded {
		return secret, nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 || len(kvs[0].Value) < 16 {
		return nil, fmt.Errorf("gossip secret %s in etcd is missing or shorter than 16 bytes; delete it to make a new one", key)
	}
	return kvs[0].Value, nil
}

// prepareTLS settles the gRPC port's certificate and the CA agents verify
// it with (returned, PEM; nil when agents dial in plaintext). A
// coordinator that runs its own webhook certificates on Kubernetes (make
// cluster) serves TLS by default: its gRPC certificate is issued by the
// webhook's CA for the --listen and --advertise hosts, so the one CA the
// apiserver trusts for the webhook is the one agents trust too.
func (c *Coordinator) prepareTLS(log *slog.Logger) ([]byte, error) {
	cfg := &c.cfg
	var agentCA []byte
	switch {
	case cfg.AgentCA != "":
		b, err := os.ReadFile(cfg.AgentCA)
		if err != nil {
			return nil, fmt.Errorf("--agent-ca: %w", err)
		}
		agentCA = b
	case cfg.TLSCert != "" && cfg.WebhookTLSDir != "":
		// A deployment's Secret (kubernetes.io/tls, cert-manager) carries
		// its CA as ca.crt.
		if b, err := os.ReadFile(filepath.Join(cfg.WebhookTLSDir, "ca.crt")); err == nil {
			agentCA = b
		}
	}
	if !cfg.makesOwnTLS() || c.kube == nil {
		if cfg.TLSCert != "" && agentCA == nil && cfg.WebhookListen != "" {
			log.Warn("the gRPC port serves TLS but injected agents get no CA to verify it with: give --agent-ca")
		}
		return agentCA, nil
	}
	dir := cfg.WebhookCertDir
	if dir == "" {
		dir = filepath.Join(cfg.DataDir, "webhook")
	}
	whost, _, _ := net.SplitHostPort(cfg.WebhookListen)
	caPEM, _, _, err := webhook.EnsureCerts(dir, []string{whost})
	if err != nil {
		return nil, fmt.Errorf("webhook certificates in %s: %w", dir, err)
	}
	ca, err := pki.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, fmt.Errorf("webhook CA in %s: %w", dir, err)
	}
	var hosts []string
	for _, a := range append([]string{cfg.Listen}, strings.Split(cfg.Advertise, ",")...) {
		if h, _, err := net.SplitHostPort(strings.TrimSpace(a)); err == nil && h != "" && !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	certPEM, keyPEM, err := ca.Issue(pki.Leaf{CommonName: "muster-coordinator", Hosts: hosts, Server: true, Validity: 365 * 24 * time.Hour})
	if err != nil {
		return nil, fmt.Errorf("gRPC certificate: %w", err)
	}
	cfg.TLSCert, cfg.TLSKey = filepath.Join(dir, "grpc.crt"), filepath.Join(dir, "grpc.key")
	if err := pki.WriteFiles(cfg.TLSCert, certPEM, cfg.TLSKey, keyPEM); err != nil {
		return nil, fmt.Errorf("gRPC certificate: %w", err)
	}
	log.Info("gRPC port serves TLS with a certificate from the webhook's CA", "hosts", strings.Join(hosts, ","), "cert", cfg.TLSCert)
	return caPEM, nil
}
