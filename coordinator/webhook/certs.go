package webhook

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/muster-dev/muster/pki"
)

// Certificate lifetimes. A certificate is replaced once it has less than
// renewBefore left, so a restarted coordinator never serves one that
// expires under it.
const (
	caLifetime      = 10 * 365 * 24 * time.Hour
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

	ca, err := loadCA(caFile, caKeyFile)
	if err != nil {
		if ca, err = pki.NewCAFiles("muster-webhook-ca", caLifetime, caFile, caKeyFile); err != nil {
			return nil, "", "", fmt.Errorf("webhook certificates: create CA: %w", err)
		}
	}
	if err := checkServing(certFile, keyFile, ca.Cert, hosts); err != nil {
		// A crash between the key and the certificate leaves a pair that
		// does not match, which the next EnsureCerts replaces.
		serving := pki.Leaf{CommonName: hosts[0], Hosts: hosts, Server: true, Validity: servingLifetime}
		if err := ca.IssueFiles(serving, certFile, keyFile); err != nil {
			return nil, "", "", fmt.Errorf("webhook certificates: serving certificate for %v: %w", hosts, err)
		}
	}
	return ca.PEM, certFile, keyFile, nil
}

// loadCA reads the CA kept in dir, unless it expires soon.
func loadCA(certFile, keyFile string) (*pki.CA, error) {
	ca, err := pki.LoadCA(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	if time.Until(ca.Cert.NotAfter) < renewBefore {
		return nil, errors.New("CA expires soon")
	}
	return ca, nil
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
