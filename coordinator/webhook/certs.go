package webhook

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
)

// Certificate lifetimes. A certificate is replaced once it has less than
// renewBefore left, so a restarted coordinator never serves one that
// expires under it.
const (
	servingLifetime = 365 * 24 * time.Hour
	renewBefore     = 30 * 24 * time.Hour
)

// The files EnsureCerts keeps in its directory.
const (
	caCertName  = "ca.crt"
	caKeyName   = "ca.key"
	tlsCertName = "tls.crt"
	tlsKeyName  = "tls.key"
)

// EnsureCerts keeps in dir a CA and a serving certificate for hosts (IP
// addresses or DNS names) signed by it, and returns the CA (the webhook
// configuration's caBundle) and the serving certificate's files. Valid
// files are reused; a serving certificate that expires soon or misses a
// host is reissued by the same CA, so a caBundle already registered stays
// good.
func EnsureCerts(dir string, hosts []string) (caPEM []byte, certFile, keyFile string, err error) {
	if len(hosts) == 0 || slices.Contains(hosts, "") {
		return nil, "", "", fmt.Errorf("webhook certificates: hosts %q: want one or more IP addresses or DNS names, none empty", hosts)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", "", fmt.Errorf("webhook certificates: %w", err)
	}
	caFile, caKeyFile := filepath.Join(dir, caCertName), filepath.Join(dir, caKeyName)
	certFile, keyFile = filepath.Join(dir, tlsCertName), filepath.Join(dir, tlsKeyName)

	ca, caKey, err := loadCA(caFile, caKeyFile)
	if err != nil {
		if ca, caKey, err = newCA(caFile, caKeyFile); err != nil {
			return nil, "", "", err
		}
	}
	if err := checkServing(certFile, keyFile, ca, hosts); err != nil {
		if err := newServing(certFile, keyFile, ca, caKey, hosts); err != nil {
			return nil, "", "", err
		}
	}
	caPEM, err = certutil.EncodeCertificates(ca)
	if err != nil {
		return nil, "", "", fmt.Errorf("webhook certificates: encode CA: %w", err)
	}
	return caPEM, certFile, keyFile, nil
}

func loadCA(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile) // also checks that the key matches
	if err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	switch {
	case !ok:
		return nil, nil, errors.New("CA key cannot sign")
	case !ca.IsCA:
		return nil, nil, errors.New("not a CA")
	case time.Until(ca.NotAfter) < renewBefore:
		return nil, nil, errors.New("CA expires soon")
	}
	return ca, key, nil
}

func newCA(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("webhook certificates: generate CA key: %w", err)
	}
	// NewSelfSignedCACert gives the CA 10 years.
	ca, err := certutil.NewSelfSignedCACert(certutil.Config{CommonName: "muster-webhook-ca"}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("webhook certificates: create CA: %w", err)
	}
	if err := write(certFile, keyFile, ca, key); err != nil {
		return nil, nil, err
	}
	return ca, key, nil
}

// checkServing says why the serving certificate cannot be reused, if so.
func checkServing(certFile, keyFile string, ca *x509.Certificate, hosts []string) error {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	crt, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return err
	}
	if time.Until(crt.NotAfter) < renewBefore {
		return errors.New("serving certificate expires soon")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := crt.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return err
	}
	for _, h := range hosts {
		if err := crt.VerifyHostname(h); err != nil {
			return err
		}
	}
	return nil
}

// newServing issues the serving certificate. client-go's cert helpers make
// self-signed certificates only, so the signing is done here.
func newServing(certFile, keyFile string, ca *x509.Certificate, caKey crypto.Signer, hosts []string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("webhook certificates: generate serving key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return fmt.Errorf("webhook certificates: serial number: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    now.Add(-time.Hour), // tolerate clocks a little behind ours
		NotAfter:     now.Add(servingLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("webhook certificates: sign serving certificate for %v: %w", hosts, err)
	}
	crt, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("webhook certificates: %w", err)
	}
	return write(certFile, keyFile, crt, key)
}

func write(certFile, keyFile string, crt *x509.Certificate, key crypto.PrivateKey) error {
	certPEM, err := certutil.EncodeCertificates(crt)
	if err != nil {
		return fmt.Errorf("webhook certificates: encode %s: %w", certFile, err)
	}
	keyPEM, err := keyutil.MarshalPrivateKeyToPEM(key)
	if err != nil {
		return fmt.Errorf("webhook certificates: encode %s: %w", keyFile, err)
	}
	// A crash between the two writes leaves a pair that does not match,
	// which the next EnsureCerts replaces.
	if err := keyutil.WriteKey(keyFile, keyPEM); err != nil {
		return fmt.Errorf("webhook certificates: %w", err)
	}
	if err := certutil.WriteCert(certFile, certPEM); err != nil {
		return fmt.Errorf("webhook certificates: %w", err)
	}
	return nil
}
