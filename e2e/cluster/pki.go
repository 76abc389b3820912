package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/util/keyutil"

	"github.com/muster-dev/muster/pki"
)

// certs is the set of files the control plane authenticates with. Everything
// is signed by one throw-away CA made at every start: the cluster lives only
// as long as its launcher, so nothing is worth keeping.
type certs struct {
	dir string
	ca  *pki.CA

	caCert, caKey               string // cluster CA; kcm also signs CSRs with it
	apiserverCert, apiserverKey string // kube-apiserver's serving cert
	servingCert, servingKey     string // kcm's and the scheduler's serving cert
	adminCert, adminKey         string // client cert in system:masters, for the kubeconfig
	proxyCert, proxyKey         string // the apiserver's front-proxy client cert
	kubeletClientCert           string // the apiserver's client cert toward kubelets (logs, exec)
	kubeletClientKey            string
	saKey                       string // service-account token signing key
}

// clusterName names the cluster, its CA and the kubeconfig context.
const clusterName = "muster"

// frontProxyClient is the only name the apiserver accepts request headers
// (X-Remote-User ...) from.
const frontProxyClient = "front-proxy-client"

// Lifetimes of the cluster CA and of the certificates it issues.
const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	leafLifetime = 365 * 24 * time.Hour
)

// newCerts writes a CA and the certificates signed by it into dir.
// serviceIP is the first address of --service-cluster-ip-range: in-cluster
// clients reach the apiserver as the `kubernetes` Service, so its serving
// cert names that address too (a SAN only; nothing here routes to it).
func newCerts(dir string, serviceIP net.IP) (*certs, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pki dir: %w", err)
	}
	p := &certs{dir: dir, caCert: filepath.Join(dir, "ca.crt"), caKey: filepath.Join(dir, "ca.key")}
	var err error
	if p.ca, err = pki.NewCAFiles(clusterName+"-ca", caLifetime, p.caCert, p.caKey); err != nil {
		return nil, fmt.Errorf("create cluster CA: %w", err)
	}

	loopback := []string{"127.0.0.1", "::1"}
	leaves := []struct {
		name      string
		leaf      pki.Leaf
		cert, key *string
	}{
		{
			name: "apiserver",
			leaf: pki.Leaf{CommonName: "kube-apiserver", Server: true, Hosts: append([]string{
				"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
			}, append(loopback, serviceIP.String())...)},
			cert: &p.apiserverCert, key: &p.apiserverKey,
		},
		{
			name: "serving",
			leaf: pki.Leaf{CommonName: "localhost", Server: true, Hosts: append([]string{"localhost"}, loopback...)},
			cert: &p.servingCert, key: &p.servingKey,
		},
		{
			// system:masters is bound to cluster-admin by the apiserver's
			// bootstrap RBAC policy, and it bypasses authorization entirely.
			name: "admin",
			leaf: pki.Leaf{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}, Client: true},
			cert: &p.adminCert, key: &p.adminKey,
		},
		{
			// The apiserver's client cert toward aggregated API servers.
			// Configuring the front proxy also fills the requestheader CA in
			// kube-system/extension-apiserver-authentication, without which
			// kcm and the scheduler log an error about it every few seconds.
			name: "front-proxy-client",
			leaf: pki.Leaf{CommonName: frontProxyClient, Client: true},
			cert: &p.proxyCert, key: &p.proxyKey,
		},
		{
			// The apiserver's client cert toward kubelets (kubectl logs,
			// exec), as kubeadm makes it: system:masters, so a node backend
			// that authorizes requests finds the apiserver allowed.
			name: "apiserver-kubelet-client",
			leaf: pki.Leaf{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}, Client: true},
			cert: &p.kubeletClientCert, key: &p.kubeletClientKey,
		},
	}
	for _, l := range leaves {
		if *l.cert, *l.key, err = p.issue(l.name, l.leaf); err != nil {
			return nil, err
		}
	}

	p.saKey = filepath.Join(dir, "sa.key")
	if err := writeServiceAccountKey(p.saKey); err != nil {
		return nil, err
	}
	return p, nil
}

// issue writes a new key and a certificate for it signed by the CA, as
// <name>.crt and <name>.key in the pki dir.
func (p *certs) issue(name string, l pki.Leaf) (certPath, keyPath string, err error) {
	certPath, keyPath = filepath.Join(p.dir, name+".crt"), filepath.Join(p.dir, name+".key")
	l.Validity = leafLifetime
	if err := p.ca.IssueFiles(l, certPath, keyPath); err != nil {
		return "", "", fmt.Errorf("issue %s certificate: %w", name, err)
	}
	return certPath, keyPath, nil
}

// writeServiceAccountKey writes the key service-account tokens are signed
// with: the apiserver signs them with it (--service-account-signing-key-file)
// and verifies them with it (--service-account-key-file accepts a private
// key and uses its public half); kcm signs legacy token secrets with it.
// It is written in SEC 1 form ("EC PRIVATE KEY"), not pki's PKCS#8: the
// apiserver reads --service-account-key-file with keyutil.ParsePublicKeysPEM,
// which takes an EC private key in no other form.
func writeServiceAccountKey(path string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate service-account key: %w", err)
	}
	data, err := keyutil.MarshalPrivateKeyToPEM(key)
	if err != nil {
		return fmt.Errorf("encode key %s: %w", path, err)
	}
	if err := pki.WriteKey(path, data); err != nil {
		return fmt.Errorf("write key %s: %w", path, err)
	}
	return nil
}
