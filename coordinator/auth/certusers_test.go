package auth_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/pki"
)

func TestKubeUserIdentity(t *testing.T) {
	tests := []struct {
		name       string
		cn         string
		orgs       []string
		wantName   string // "": Unauthenticated
		wantGroups []string
	}{
		{name: "user with groups", cn: "alice", orgs: []string{"devs", "ops"}, wantName: "user alice", wantGroups: []string{"devs", "ops", "system:authenticated"}},
		{name: "user without groups", cn: "bob", wantName: "user bob", wantGroups: []string{"system:authenticated"}},
		{name: "system:authenticated not twice", cn: "carol", orgs: []string{"system:authenticated", "devs"}, wantName: "user carol", wantGroups: []string{"system:authenticated", "devs"}},
		{name: "cluster admin", cn: "kubernetes-admin", orgs: []string{"system:masters"}, wantName: "user kubernetes-admin", wantGroups: []string{"system:masters", "system:authenticated"}},
		{name: "no common name", orgs: []string{"system:masters"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &x509.Certificate{Subject: pkix.Name{CommonName: tc.cn, Organization: tc.orgs}, SerialNumber: big.NewInt(7)}
			orgs := slices.Clone(tc.orgs)
			id, err := auth.KubeUserIdentity(c)
			if tc.wantName == "" {
				if status.Code(err) != codes.Unauthenticated || id != nil {
					t.Fatalf("KubeUserIdentity = %+v, %v; want Unauthenticated", id, err)
				}
				if msg := status.Convert(err).Message(); !strings.Contains(msg, "no common name") {
					t.Errorf("message %q does not say the common name is missing", msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("KubeUserIdentity: %v", err)
			}
			checkIdentity(t, id, &auth.Identity{Name: tc.wantName, User: &auth.User{}})
			if id.User.Name != tc.cn || !slices.Equal(id.User.Groups, tc.wantGroups) {
				t.Errorf("user %q groups %v, want %q groups %v", id.User.Name, id.User.Groups, tc.cn, tc.wantGroups)
			}
			if !slices.Equal(c.Subject.Organization, orgs) {
				t.Errorf("the certificate's organizations changed to %v", c.Subject.Organization)
			}
		})
	}
}

// testCA is a CA of the repo's pki package with its pool.
type testCA struct {
	ca   *pki.CA
	pool *x509.CertPool
}

func newTestCA(t *testing.T, name string) testCA {
	t.Helper()
	ca, _, err := pki.NewCA(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return testCA{ca: ca, pool: pool}
}

func (c testCA) issue(t *testing.T, l pki.Leaf) *x509.Certificate {
	t.Helper()
	l.Client, l.Validity = true, time.Hour
	certPEM, _, err := c.ca.Issue(l)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// handshook is a call over TLS whose handshake verified leaf against the
// CAs it accepted (the chain it says it verified is leaf and its issuer).
func handshook(leaf *x509.Certificate, issuer *x509.Certificate) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
		PeerCertificates: []*x509.Certificate{leaf}, VerifiedChains: [][]*x509.Certificate{{leaf, issuer}}}}})
}

// With both --client-ca (members, operators) and the cluster's client CA
// (kubectl users), the CA that signed a certificate decides what it is: a
// muster identity in a user's certificate is not taken, and a
// certificate of neither is refused.
func TestCertAuthenticateMembersAndUsers(t *testing.T) {
	members, kube, other := newTestCA(t, "muster"), newTestCA(t, "kubernetes"), newTestCA(t, "other")
	member := members.issue(t, pki.Leaf{CommonName: "host-0", URIs: []string{auth.MemberURI("ns1", "llama", "host-0")}, Hosts: []string{"10.0.0.2"}})
	operator := members.issue(t, pki.Leaf{CommonName: "ops", URIs: []string{auth.OperatorURI}})
	alice := kube.issue(t, pki.Leaf{CommonName: "alice", Organization: []string{"devs"}})
	sneaky := kube.issue(t, pki.Leaf{CommonName: "mallory", URIs: []string{auth.OperatorURI, auth.MemberURI("ns1", "llama", "host-0")}})
	nameless := kube.issue(t, pki.Leaf{Organization: []string{"system:masters"}})
	stranger := other.issue(t, pki.Leaf{CommonName: "alice", URIs: []string{auth.OperatorURI}})

	tests := []struct {
		name   string
		cert   *x509.Certificate
		issuer *x509.Certificate
		by     auth.Cert
		// want is the identity; nil: Unauthenticated naming wantErr.
		want       *auth.Identity
		wantGroups []string
		wantErr    []string
	}{
		{
			name: "member certificate of --client-ca", cert: member, issuer: members.ca.Cert,
			by:   auth.Cert{Members: members.pool, Users: func() *x509.CertPool { return kube.pool }},
			want: &auth.Identity{Name: "certificate muster://member/ns1/llama/host-0", Namespace: "ns1", Group: "llama", Member: "host-0", Addresses: []string{"10.0.0.2"}},
		},
		{
			name: "operator certificate of --client-ca", cert: operator, issuer: members.ca.Cert,
			by:   auth.Cert{Members: members.pool, Users: func() *x509.CertPool { return kube.pool }},
			want: &auth.Identity{Name: `operator certificate "ops"`, Operator: true},
		},
		{
			name: "user certificate of the cluster's client CA", cert: alice, issuer: kube.ca.Cert,
			by:         auth.Cert{Members: members.pool, Users: func() *x509.CertPool { return kube.pool }},
			want:       &auth.Identity{Name: "user alice", User: &auth.User{}},
			wantGroups: []string{"devs", "system:authenticated"},
		},
		{
			name: "a user certificate carrying muster identities is only a user", cert: sneaky, issuer: kube.ca.Cert,
			by:         auth.Cert{Members: members.pool, Users: func() *x509.CertPool { return kube.pool }},
			want:       &auth.Identity{Name: "user mallory", User: &auth.User{}},
			wantGroups: []string{"system:authenticated"},
		},
		{
			name: "user certificate without --client-ca", cert: alice, issuer: kube.ca.Cert,
			by:         auth.Cert{Users: func() *x509.CertPool { return kube.pool }},
			want:       &auth.Identity{Name: "user alice", User: &auth.User{}},
			wantGroups: []string{"devs", "system:authenticated"},
		},
		{
			name: "user certificate without a common name", cert: nameless, issuer: kube.ca.Cert,
			by:      auth.Cert{Members: members.pool, Users: func() *x509.CertPool { return kube.pool }},
			wantErr: []string{"no common name"},
		},
		{
			name: "member certificate without --client-ca", cert: member, issuer: members.ca.Cert,
			by:      auth.Cert{Users: func() *x509.CertPool { return kube.pool }},
			wantErr: []string{"signed by neither --client-ca nor the cluster's client CA"},
		},
		{
			name: "certificate of neither CA", cert: stranger, issuer: other.ca.Cert,
			by:      auth.Cert{Members: members.pool, Users: func() *x509.CertPool { return kube.pool }},
			wantErr: []string{`"alice"`, "signed by neither --client-ca nor the cluster's client CA"},
		},
		{
			name: "user certificate before the cluster's CA was read", cert: alice, issuer: kube.ca.Cert,
			by:      auth.Cert{Members: members.pool, Users: func() *x509.CertPool { return nil }},
			wantErr: []string{"signed by neither"},
		},
		{
			// Without the cluster's CA the handshake verified against
			// --client-ca alone: the chain is taken as it is.
			name: "only --client-ca", cert: member, issuer: members.ca.Cert,
			by:   auth.Cert{},
			want: &auth.Identity{Name: "certificate muster://member/ns1/llama/host-0", Namespace: "ns1", Group: "llama", Member: "host-0", Addresses: []string{"10.0.0.2"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.by.Authenticate(handshook(tc.cert, tc.issuer))
			if tc.want == nil {
				if status.Code(err) != codes.Unauthenticated || id != nil {
					t.Fatalf("Authenticate = %+v, %v; want Unauthenticated", id, err)
				}
				for _, w := range tc.wantErr {
					if msg := status.Convert(err).Message(); !strings.Contains(msg, w) {
						t.Errorf("message %q does not name %q", msg, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Authenticate: %v", err)
			}
			if tc.want.Operator {
				// The operator's name carries the serial.
				if !id.Operator || !strings.HasPrefix(id.Name, tc.want.Name) || id.User != nil || id.Member != "" {
					t.Fatalf("identity %+v, want an operator %s", id, tc.want.Name)
				}
				return
			}
			checkIdentity(t, id, tc.want)
			if id.Operator || (id.User != nil && id.Member != "") {
				t.Errorf("identity %+v has more rights than %+v", id, tc.want)
			}
			if tc.wantGroups != nil && (id.User == nil || !slices.Equal(id.User.Groups, tc.wantGroups)) {
				t.Errorf("user %+v, want groups %v", id.User, tc.wantGroups)
			}
		})
	}
}
