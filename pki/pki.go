// Package pki makes every certificate muster serves and authenticates
// with: a CA, serving certificates (the coordinator's, the admission
// webhook's, the local cluster's apiserver and kubelets), and client
// certificates (members and operators on bare hosts, the local cluster's
// components). Keys are ECDSA P-256; files are PEM, keys written 0600.
//
// Callers keep only their policy: which names a certificate carries and
// how long it lives, and when one on disk is good enough to keep.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"sync"
	"time"
)

// CA is a certificate authority that can sign.
type CA struct {
	Cert   *x509.Certificate
	Signer crypto.Signer
	PEM    []byte
}

// NewCA makes a self-signed CA named name, valid for validity.
func NewCA(name string, validity time.Duration) (*CA, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return &CA{Cert: cert, Signer: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, keyPEM, nil
}

// NewCAFiles makes a CA as NewCA does and writes its certificate and key
// as WriteFiles does.
func NewCAFiles(name string, validity time.Duration, certFile, keyFile string) (*CA, error) {
	ca, keyPEM, err := NewCA(name, validity)
	if err != nil {
		return nil, err
	}
	if err := WriteFiles(certFile, ca.PEM, keyFile, keyPEM); err != nil {
		return nil, err
	}
	return ca, nil
}

// LoadCA reads a CA's certificate and key files (PEM; the key in PKCS#8,
// SEC 1 or PKCS#1 form, as other tools write them).
func LoadCA(certFile, keyFile string) (*CA, error) {
	cb, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	if c, _ := pem.Decode(cb); c == nil {
		return nil, fmt.Errorf("%s is not PEM", certFile)
	}
	if k, _ := pem.Decode(kb); k == nil {
		return nil, fmt.Errorf("%s is not PEM", keyFile)
	}
	pair, err := tls.X509KeyPair(cb, kb) // also checks the key matches
	if err != nil {
		return nil, fmt.Errorf("%s / %s: %w", certFile, keyFile, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok || !cert.IsCA {
		return nil, fmt.Errorf("%s / %s is not a CA certificate and its key", certFile, keyFile)
	}
	return &CA{Cert: cert, Signer: signer, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: pair.Certificate[0]})}, nil
}

// Leaf describes a certificate to issue.
type Leaf struct {
	CommonName string
	// Organization is the subject's O (Kubernetes reads it as the groups
	// of a client certificate's user).
	Organization []string
	// Hosts are IP addresses and DNS names (SANs).
	Hosts []string
	// URIs are URI SANs (muster identities).
	URIs     []string
	Server   bool // serverAuth usage
	Client   bool // clientAuth usage
	Validity time.Duration
}

// Issue signs l and returns the certificate and key, PEM encoded.
func (ca *CA) Issue(l Leaf) (certPEM, keyPEM []byte, err error) {
	if !l.Server && !l.Client {
		return nil, nil, errors.New("a certificate for neither server nor client use")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: l.CommonName, Organization: l.Organization},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(l.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if l.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if l.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	for _, h := range l.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	for _, u := range l.URIs {
		pu, err := url.Parse(u)
		if err != nil {
			return nil, nil, fmt.Errorf("URI %q: %w", u, err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Signer)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// IssueFiles issues l as Issue does and writes the certificate and key as
// WriteFiles does.
func (ca *CA) IssueFiles(l Leaf, certFile, keyFile string) error {
	certPEM, keyPEM, err := ca.Issue(l)
	if err != nil {
		return err
	}
	return WriteFiles(certFile, certPEM, keyFile, keyPEM)
}

// WriteFiles writes a certificate (0644) and its key as WriteKey does.
func WriteFiles(certFile string, certPEM []byte, keyFile string, keyPEM []byte) error {
	if err := WriteKey(keyFile, keyPEM); err != nil {
		return err
	}
	return writeAtomic(certFile, certPEM, 0o644)
}

// WriteKey writes a private key (0600). The file is created afresh: an
// existing one is replaced, never written through a symlink.
func WriteKey(keyFile string, keyPEM []byte) error {
	return writeAtomic(keyFile, keyPEM, 0o600)
}

func writeAtomic(file string, b []byte, mode os.FileMode) error {
	tmp := file + ".new"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	return n
}

// KeyPair is a certificate and key on disk, read again when the
// certificate file changes, so that a rotated certificate (a renewed
// Secret, a replaced file) takes effect at the next handshake without a
// restart. A half-written rotation keeps the previous pair.
type KeyPair struct {
	CertFile, KeyFile string

	mu     sync.Mutex
	mod    time.Time
	cached *tls.Certificate
}

// Get returns the current pair.
func (k *KeyPair) Get() (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	st, err := os.Stat(k.CertFile)
	if err != nil {
		return nil, err
	}
	if k.cached != nil && st.ModTime().Equal(k.mod) {
		return k.cached, nil
	}
	c, err := tls.LoadX509KeyPair(k.CertFile, k.KeyFile)
	if err != nil {
		if k.cached != nil {
			return k.cached, nil
		}
		return nil, fmt.Errorf("%s / %s: %w", k.CertFile, k.KeyFile, err)
	}
	k.cached, k.mod = &c, st.ModTime()
	return k.cached, nil
}
