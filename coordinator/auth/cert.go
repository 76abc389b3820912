package auth

import (
	"context"
	"crypto/x509"
	"fmt"
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
type Cert struct{}

// Authenticate returns nil, nil when the call carries no verified client
// certificate (the next authenticator may know it).
func (Cert) Authenticate(ctx context.Context) (*Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return nil, nil
	}
	return CertIdentity(ti.State.VerifiedChains[0][0])
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
