package auth

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/podapi/names"
)

// Member and operator certificates name their holder in a URI SAN: the CA
// that signs them (--client-ca) vouches for the member, and for the
// addresses it may announce (the certificate's IP and DNS names).
const (
	// MemberURIPrefix + "NAMESPACE/GROUP/MEMBER" names one member.
	MemberURIPrefix = "muster://member/"
	// OperatorURI names an operator, who may read and act on every group.
	OperatorURI = "muster://operator"
)

// MemberURI is the URI SAN of a member certificate.
func MemberURI(namespace, groupName, member string) string {
	return MemberURIPrefix + namespace + "/" + groupName + "/" + member
}

// Cert identifies callers by their verified client certificate.
type Cert struct {
	// Members is the CA of member and operator certificates (--client-ca).
	// With Users nil it may be nil too: the TLS handshake verified the
	// chain against --client-ca alone.
	Members *x509.CertPool
	// Users, when not nil, returns the Kubernetes cluster's client CA (the
	// apiserver's --client-ca-file): a certificate it signed is a
	// Kubernetes user, named as the apiserver names it (common name the
	// user, organizations its groups), who may do what RBAC allows.
	Users func() *x509.CertPool
}

// Authenticate returns nil, nil when the call carries no verified client
// certificate (the next authenticator may know it).
func (c *Cert) Authenticate(ctx context.Context) (*Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return nil, nil
	}
	leaf := ti.State.VerifiedChains[0][0]
	if c.Users == nil {
		return CertIdentity(leaf)
	}
	// The handshake verified the chain against both CAs: which one
	// signed it decides what it is.
	inter := x509.NewCertPool()
	for _, ic := range ti.State.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	verifies := func(roots *x509.CertPool) bool {
		if roots == nil {
			return false
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		return err == nil
	}
	if verifies(c.Members) {
		return CertIdentity(leaf)
	}
	if verifies(c.Users()) {
		return KubeUserIdentity(leaf)
	}
	return nil, status.Errorf(codes.Unauthenticated, "client certificate %s is signed by neither --client-ca nor the cluster's client CA", describeCert(leaf))
}

// KubeUserIdentity reads a certificate of the cluster's client CA as the
// apiserver does: the common name is the user, the organizations its
// groups (and every such user is in system:authenticated).
func KubeUserIdentity(c *x509.Certificate) (*Identity, error) {
	name := c.Subject.CommonName
	if name == "" {
		return nil, status.Errorf(codes.Unauthenticated, "client certificate %s of the cluster's client CA has no common name (the user name)", describeCert(c))
	}
	groups := append([]string(nil), c.Subject.Organization...)
	if !slices.Contains(groups, "system:authenticated") {
		groups = append(groups, "system:authenticated")
	}
	return &Identity{Name: "user " + name, User: &User{Name: name, Groups: groups}}, nil
}

// CertIdentity reads the identity a verified certificate carries.
func CertIdentity(c *x509.Certificate) (*Identity, error) {
	for _, u := range c.URIs {
		s := u.String()
		if s == OperatorURI {
			return &Identity{Name: "operator certificate " + describeCert(c), Operator: true}, nil
		}
		if !strings.HasPrefix(s, MemberURIPrefix) {
			continue
		}
		parts := strings.Split(strings.TrimPrefix(s, MemberURIPrefix), "/")
		if len(parts) != 3 {
			return nil, status.Errorf(codes.Unauthenticated, "client certificate %s: URI %q: want %sNAMESPACE/GROUP/MEMBER", describeCert(c), s, MemberURIPrefix)
		}
		for i, f := range []string{"namespace", "group", "member"} {
			max := names.MaxGroupNameLen
			if f == "member" {
				max = names.MaxMemberIDLen
			}
			if err := names.ValidateName(f, parts[i], max); err != nil {
				return nil, status.Errorf(codes.Unauthenticated, "client certificate %s: URI %q: %v", describeCert(c), s, err)
			}
		}
		id := &Identity{Name: "certificate " + s, Namespace: parts[0], Group: parts[1], Member: parts[2]}
		for _, ip := range c.IPAddresses {
			id.Addresses = append(id.Addresses, ip.String())
		}
		id.Addresses = append(id.Addresses, c.DNSNames...)
		return id, nil
	}
	return nil, status.Errorf(codes.Unauthenticated, "client certificate %s names no muster identity: want a URI SAN %sNAMESPACE/GROUP/MEMBER or %s (coordinator certs member|operator makes one)", describeCert(c), MemberURIPrefix, OperatorURI)
}

func describeCert(c *x509.Certificate) string {
	return fmt.Sprintf("%q (serial %s)", c.Subject.CommonName, c.SerialNumber)
}
