package auth_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
)

// certWith is a parsed-looking certificate carrying the given SANs; the
// verification that the interceptors rely on is the TLS stack's, so
// CertIdentity only reads fields.
func certWith(t *testing.T, uris []string, ips []string, dns []string) *x509.Certificate {
	t.Helper()
	c := &x509.Certificate{Subject: pkix.Name{CommonName: "holder"}, SerialNumber: big.NewInt(42), DNSNames: dns}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatalf("url.Parse(%q): %v", u, err)
		}
		c.URIs = append(c.URIs, pu)
	}
	for _, ip := range ips {
		p := net.ParseIP(ip)
		if p == nil {
			t.Fatalf("net.ParseIP(%q) = nil", ip)
		}
		c.IPAddresses = append(c.IPAddresses, p)
	}
	return c
}

func TestCertIdentity(t *testing.T) {
	tests := []struct {
		name     string
		uris     []string
		ips, dns []string
		want     *auth.Identity // nil: an error is wanted
		// wantErr are substrings of the Unauthenticated message.
		wantErr []string
	}{
		{
			name: "member with IP and DNS SANs",
			uris: []string{"muster://member/ns1/llama/host-0"},
			ips:  []string{"10.0.0.2", "fd00::2"}, dns: []string{"host-0.example"},
			want: &auth.Identity{Name: "certificate muster://member/ns1/llama/host-0", Namespace: "ns1", Group: "llama", Member: "host-0",
				Addresses: []string{"10.0.0.2", "fd00::2", "host-0.example"}},
		},
		{
			name: "member without addresses",
			uris: []string{auth.MemberURI("default", "g", "m")},
			want: &auth.Identity{Name: "certificate muster://member/default/g/m", Namespace: "default", Group: "g", Member: "m"},
		},
		{
			name: "first muster URI wins over foreign ones",
			uris: []string{"spiffe://cluster.local/ns/x/sa/y", "muster://member/a/b/c"},
			want: &auth.Identity{Name: "certificate muster://member/a/b/c", Namespace: "a", Group: "b", Member: "c"},
		},
		{
			name: "operator",
			uris: []string{auth.OperatorURI},
			ips:  []string{"10.0.0.9"},
			want: &auth.Identity{Name: `operator certificate "holder" (serial 42)`, Operator: true},
		},
		{name: "too few parts", uris: []string{"muster://member/ns/g"}, wantErr: []string{"muster://member/ns/g", "NAMESPACE/GROUP/MEMBER"}},
		{name: "too many parts", uris: []string{"muster://member/ns/g/m/x"}, wantErr: []string{"NAMESPACE/GROUP/MEMBER"}},
		{name: "trailing slash", uris: []string{"muster://member/ns/g/m/"}, wantErr: []string{"NAMESPACE/GROUP/MEMBER"}},
		{name: "empty namespace", uris: []string{"muster://member//g/m"}, wantErr: []string{"namespace is empty"}},
		{name: "empty member", uris: []string{"muster://member/ns/g/"}, wantErr: []string{"member is empty"}},
		{name: "invalid group name", uris: []string{"muster://member/ns/-bad-/m"}, wantErr: []string{"group", `"-bad-"`, "not a valid name"}},
		{name: "escaped slash in member", uris: []string{"muster://member/ns/g/a%2Fb"}, wantErr: []string{"member", "not a valid name"}},
		{name: "query smuggled into member", uris: []string{"muster://member/ns/g/m?x=1"}, wantErr: []string{"member", "not a valid name"}},
		{name: "member too long", uris: []string{"muster://member/ns/g/" + strings.Repeat("m", 1000)}, wantErr: []string{"member", "the limit is"}},
		{name: "operator look-alike", uris: []string{"muster://operator/extra"}, wantErr: []string{"names no muster identity", auth.OperatorURI}},
		{name: "other scheme", uris: []string{"https://member/ns/g/m"}, wantErr: []string{"names no muster identity"}},
		{
			name: "no URI at all", ips: []string{"10.0.0.2"},
			wantErr: []string{`"holder" (serial 42)`, "names no muster identity", "muster://member/NAMESPACE/GROUP/MEMBER", auth.OperatorURI, "coordinator certs"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := auth.CertIdentity(certWith(t, tc.uris, tc.ips, tc.dns))
			if tc.want == nil {
				if status.Code(err) != codes.Unauthenticated {
					t.Fatalf("CertIdentity = %+v, %v; want Unauthenticated", got, err)
				}
				if got != nil {
					t.Errorf("CertIdentity returned identity %+v along with error %v", got, err)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(status.Convert(err).Message(), w) {
						t.Errorf("error %q does not name %q", status.Convert(err).Message(), w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("CertIdentity: %v", err)
			}
			checkIdentity(t, got, tc.want)
		})
	}
}

// checkIdentity compares the fields that decide a caller's rights.
func checkIdentity(t *testing.T, got, want *auth.Identity) {
	t.Helper()
	if got == nil {
		t.Fatalf("identity is nil, want %+v", want)
	}
	if got.Name != want.Name || got.Namespace != want.Namespace || got.Group != want.Group || got.Member != want.Member ||
		got.Operator != want.Operator || got.Anonymous != want.Anonymous || !slices.Equal(got.Addresses, want.Addresses) {
		t.Errorf("identity = %+v\nwant       %+v", *got, *want)
	}
	if (got.User == nil) != (want.User == nil) {
		t.Errorf("identity User = %+v, want %+v", got.User, want.User)
	}
}

func TestCertAuthenticateReadsOnlyVerifiedChains(t *testing.T) {
	member := certWith(t, []string{"muster://member/ns/g/m"}, []string{"10.1.1.1"}, nil)
	tests := []struct {
		name    string
		ctx     context.Context
		want    string // identity name; "" = no identity, no error
		wantErr codes.Code
	}{
		{name: "no peer", ctx: context.Background()},
		{name: "plaintext peer", ctx: peer.NewContext(context.Background(), &peer.Peer{})},
		{
			name: "TLS without a client certificate",
			ctx:  peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{}}}),
		},
		{
			// A certificate the client sent but the handshake did not verify
			// names nobody.
			name: "unverified peer certificate",
			ctx: peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
				PeerCertificates: []*x509.Certificate{member}}}}),
		},
		{
			name: "verified member",
			ctx: peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
				PeerCertificates: []*x509.Certificate{member}, VerifiedChains: [][]*x509.Certificate{{member}}}}}),
			want: "certificate muster://member/ns/g/m",
		},
		{
			name: "verified certificate without identity",
			ctx: peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
				VerifiedChains: [][]*x509.Certificate{{certWith(t, nil, nil, nil)}}}}}),
			wantErr: codes.Unauthenticated,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := (&auth.Cert{}).Authenticate(tc.ctx)
			switch {
			case tc.wantErr != codes.OK:
				if status.Code(err) != tc.wantErr || id != nil {
					t.Fatalf("Authenticate = %+v, %v; want %v", id, err, tc.wantErr)
				}
			case tc.want == "":
				if id != nil || err != nil {
					t.Fatalf("Authenticate = %+v, %v; want nil, nil (no certificate: the next authenticator decides)", id, err)
				}
			default:
				if err != nil || id == nil || id.Name != tc.want {
					t.Fatalf("Authenticate = %+v, %v; want identity %q", id, err, tc.want)
				}
			}
		})
	}
}
