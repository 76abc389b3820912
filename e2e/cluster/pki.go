package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
)

// pki is the set of files the control plane authenticates with. Everything
// is signed by one throw-away CA made at every start: the cluster lives only
// as long as its launcher, so nothing is worth keeping.
type pki struct {
	dir string

	caCert, caKey               string // cluster CA; kcm also signs CSRs with it
	apiserverCert, apiserverKey string // kube-apiserver's serving cert
	servingCert, servingKey     string // kcm's and the scheduler's serving cert
	adminCert, adminKey         string // client cert in system:masters, for the kubeconfig
	proxyCert, proxyKey         string // the apiserver's front-proxy client cert
	kubeletClientCert           string // the apiserver's client cert toward kubelets (logs, exec)
	kubeletClientKey            string
	saKey                       string // service-account token signing key

	ca       *x509.Certificate
	caSigner crypto.Signer
	caPEM    []byte
}

// clusterName names the cluster, its CA and the kubeconfig context.
const clusterName = "muster"

// frontProxyClient is the only name the apiserver accepts request headers
// (X-Remote-User ...) from.
const frontProxyClient = "front-proxy-client"

// newPKI writes a CA and the certificates signed by it into dir.
// serviceIP is the first address of --service-cluster-ip-range: in-cluster
// clients reach the apiserver as the `kubernetes` Service, so its serving
// cert names that address too (a SAN only; nothing here routes to it).
func newPKI(dir string, serviceIP net.IP) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pki dir: %w", err)
	}
	p := &pki{dir: dir}
	caKey, err := newKey()
	if err != nil {
		return nil, err
	}
	p.ca, err = certutil.NewSelfSignedCACert(certutil.Config{CommonName: clusterName + "-ca"}, caKey)
	if err != nil {
		return nil, fmt.Errorf("create cluster CA: %w", err)
	}
	if p.caCert, p.caKey, err = p.write("ca", p.ca, caKey); err != nil {
		return nil, err
	}
	p.caSigner = caKey
	p.caPEM, err = os.ReadFile(p.caCert)
	if err != nil {
		return nil, fmt.Errorf("read cluster CA: %w", err)
	}

	loopback := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	certs := []struct {
		name      string
		cn        string
		org       []string
		usage     x509.ExtKeyUsage
		dns       []string
		ips       []net.IP
		cert, key *string
	}{
		{
			name: "apiserver", cn: "kube-apiserver", usage: x509.ExtKeyUsageServerAuth,
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			ips: append(loopback, serviceIP), cert: &p.apiserverCert, key: &p.apiserverKey,
		},
		{
			name: "serving", cn: "localhost", usage: x509.ExtKeyUsageServerAuth,
			dns: []string{"localhost"}, ips: loopback, cert: &p.servingCert, key: &p.servingKey,
		},
		{
			// system:masters is bound to cluster-admin by the apiserver's
			// bootstrap RBAC policy, and it bypasses authorization entirely.
			name: "admin", cn: "kubernetes-admin", org: []string{"system:masters"}, usage: x509.ExtKeyUsageClientAuth,
			cert: &p.adminCert, key: &p.adminKey,
		},
		{
			// The apiserver's client cert toward aggregated API servers.
			// Configuring the front proxy also fills the requestheader CA in
			// kube-system/extension-apiserver-authentication, without which
			// kcm and the scheduler log an error about it every few seconds.
			name: "front-proxy-client", cn: frontProxyClient, usage: x509.ExtKeyUsageClientAuth,
			cert: &p.proxyCert, key: &p.proxyKey,
		},
		{
			// The apiserver's client cert toward kubelets (kubectl logs,
			// exec), as kubeadm makes it: system:masters, so a node backend
			// that authorizes requests finds the apiserver allowed.
			name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", org: []string{"system:masters"}, usage: x509.ExtKeyUsageClientAuth,
			cert: &p.kubeletClientCert, key: &p.kubeletClientKey,
		},
	}
	for _, c := range certs {
		key, err := newKey()
		if err != nil {
			return nil, err
		}
		crt, err := p.sign(caKey, key.Public(), pkix.Name{CommonName: c.cn, Organization: c.org}, c.usage, c.dns, c.ips)
		if err != nil {
			return nil, fmt.Errorf("sign %s certificate: %w", c.name, err)
		}
		if *c.cert, *c.key, err = p.write(c.name, crt, key); err != nil {
			return nil, err
		}
	}

	// Service-account tokens: the apiserver signs them with this key
	// (--service-account-signing-key-file) and verifies them with it
	// (--service-account-key-file accepts a private key and uses its
	// public half); kcm signs legacy token secrets with it.
	saKey, err := newKey()
	if err != nil {
		return nil, err
	}
	p.saKey = filepath.Join(dir, "sa.key")
	if err := writeKey(p.saKey, saKey); err != nil {
		return nil, err
	}
	return p, nil
}

// issue writes a new key and a certificate for it signed by the CA.
func (p *pki) issue(name string, subject pkix.Name, usage x509.ExtKeyUsage, dns []string, ips []net.IP) (certPath, keyPath string, err error) {
	key, err := newKey()
	if err != nil {
		return "", "", err
	}
	crt, err := p.sign(p.caSigner, key.Public(), subject, usage, dns, ips)
	if err != nil {
		return "", "", fmt.Errorf("sign %s certificate: %w", name, err)
	}
	return p.write(name, crt, key)
}

// newKey makes an ECDSA P-256 key: every Kubernetes component accepts it and
// it is generated in microseconds, unlike a 2048-bit RSA key.
func newKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

// sign issues a leaf certificate from the CA. client-go's cert helpers only
// make self-signed certificates, so this is the one piece written here.
func (p *pki) sign(caKey crypto.Signer, pub crypto.PublicKey, subject pkix.Name, usage x509.ExtKeyUsage, dns []string, ips []net.IP) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		DNSNames:     dns,
		IPAddresses:  ips,
		// Backdated an hour against clock skew between this machine's
		// processes (there is none, but it costs nothing).
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(365 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, pub, caKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func (p *pki) write(name string, crt *x509.Certificate, key crypto.PrivateKey) (certPath, keyPath string, err error) {
	certPath = filepath.Join(p.dir, name+".crt")
	keyPath = filepath.Join(p.dir, name+".key")
	data, err := certutil.EncodeCertificates(crt)
	if err != nil {
		return "", "", fmt.Errorf("encode %s certificate: %w", name, err)
	}
	if err := os.WriteFile(certPath, data, 0o644); err != nil {
		return "", "", fmt.Errorf("write %s certificate: %w", name, err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

func writeKey(path string, key crypto.PrivateKey) error {
	data, err := keyutil.MarshalPrivateKeyToPEM(key)
	if err != nil {
		return fmt.Errorf("encode key %s: %w", path, err)
	}
	if err := keyutil.WriteKey(path, data); err != nil {
		return fmt.Errorf("write key %s: %w", path, err)
	}
	return nil
}

// writeKubeconfig writes an admin kubeconfig for server with the
// certificates embedded, so the file works when copied elsewhere.
func (p *pki) writeKubeconfig(path, server string) error {
	cert, err := os.ReadFile(p.adminCert)
	if err != nil {
		return fmt.Errorf("read admin certificate: %w", err)
	}
	key, err := os.ReadFile(p.adminKey)
	if err != nil {
		return fmt.Errorf("read admin key: %w", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[clusterName] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: p.caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts[clusterName] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: "admin"}
	cfg.CurrentContext = clusterName
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
