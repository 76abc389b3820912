package auth_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
)

var (
	anonymous = &auth.Identity{Name: "anonymous", Anonymous: true}
	operator  = &auth.Identity{Name: "operator certificate", Operator: true}
	member    = &auth.Identity{Name: "pod ns1/g-0", Namespace: "ns1", Group: "g", Member: "g-0", Addresses: []string{"10.0.0.5", "g-0.g.ns1"}}
	// kubeUser is a person's (or a controller's) token: it reads what RBAC
	// allows and acts as no member.
	kubeUser = &auth.Identity{Name: "user alice", User: &auth.User{Name: "alice"}}
)

// checkDenied fails unless err is a PermissionDenied wrapping
// ErrNotAllowed whose message names each of want.
func checkDenied(t *testing.T, what string, err error, want ...string) {
	t.Helper()
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("%s = %v, want PermissionDenied", what, err)
	}
	msg := status.Convert(err).Message()
	if !strings.Contains(msg, auth.ErrNotAllowed.Error()) {
		t.Errorf("%s: message %q does not say %q", what, msg, auth.ErrNotAllowed)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("%s: message %q does not name %q", what, msg, w)
		}
	}
}

func TestActAs(t *testing.T) {
	tests := []struct {
		name              string
		id                *auth.Identity
		ns, group, member string
		// denied lists what the refusal must name; nil: allowed.
		denied []string
	}{
		{name: "anonymous acts as anyone", id: anonymous, ns: "x", group: "y", member: "z"},
		{name: "operator acts as anyone", id: operator, ns: "x", group: "y", member: "z"},
		{name: "member as itself", id: member, ns: "ns1", group: "g", member: "g-0"},
		{name: "member as another member", id: member, ns: "ns1", group: "g", member: "g-1", denied: []string{"pod ns1/g-0", `"g-0"`, `not as "g-1"`, "ns1/g"}},
		{name: "member in another group", id: member, ns: "ns1", group: "other", member: "g-0", denied: []string{"ns1/other"}},
		{name: "member in another namespace", id: member, ns: "ns2", group: "g", member: "g-0", denied: []string{"ns2/g"}},
		{name: "kubernetes user", id: kubeUser, ns: "ns1", group: "g", member: "g-0", denied: []string{"user alice", "may act as no member"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.id.ActAs(tc.ns, tc.group, tc.member)
			if tc.denied == nil {
				if err != nil {
					t.Fatalf("ActAs(%q, %q, %q) = %v, want allowed", tc.ns, tc.group, tc.member, err)
				}
				return
			}
			checkDenied(t, "ActAs", err, tc.denied...)
		})
	}
}

func TestMayAnnounce(t *testing.T) {
	noAddr := &auth.Identity{Name: "pod ns1/pending", Namespace: "ns1", Group: "g", Member: "pending"}
	tests := []struct {
		name   string
		id     *auth.Identity
		addr   string
		denied []string
	}{
		{name: "anonymous announces anything", id: anonymous, addr: "203.0.113.9"},
		{name: "operator announces anything", id: operator, addr: "203.0.113.9"},
		{name: "member its IP", id: member, addr: "10.0.0.5"},
		{name: "member its DNS name", id: member, addr: "g-0.g.ns1"},
		{name: "member someone else's IP", id: member, addr: "10.0.0.6", denied: []string{"pod ns1/g-0", "10.0.0.5, g-0.g.ns1", `"10.0.0.6"`}},
		{name: "member a prefix of its IP", id: member, addr: "10.0.0.", denied: []string{`"10.0.0."`}},
		{name: "member without addresses", id: noAddr, addr: "10.0.0.7", denied: []string{"pod ns1/pending", "has no address yet"}},
		{name: "kubernetes user", id: kubeUser, addr: "10.0.0.5", denied: []string{"user alice"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.id.MayAnnounce(tc.addr)
			if tc.denied == nil {
				if err != nil {
					t.Fatalf("MayAnnounce(%q) = %v, want allowed", tc.addr, err)
				}
				return
			}
			checkDenied(t, "MayAnnounce", err, tc.denied...)
		})
	}
}

func TestFromContext(t *testing.T) {
	if id := auth.FromContext(context.Background()); !id.Anonymous || id.Name != "in-process" {
		t.Errorf("FromContext(no identity) = %+v, want the anonymous in-process identity", id)
	}
	if id := auth.FromContext(auth.NewContext(context.Background(), member)); id != member {
		t.Errorf("FromContext(NewContext(member)) = %+v, want %+v", id, member)
	}
}

func withBearer(ctx context.Context, header string) context.Context {
	return metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", header))
}

func TestChainAuthenticate(t *testing.T) {
	tests := []struct {
		name  string
		chain *auth.Chain
		ctx   context.Context
		// wantName is the identity's name; else wantCode and wantMsg.
		wantName string
		wantCode codes.Code
		wantMsg  []string
	}{
		{
			name: "no credentials, anonymous allowed", chain: &auth.Chain{AllowAnonymous: true},
			ctx: context.Background(), wantName: "anonymous",
		},
		{
			name: "no credentials, anonymous refused", chain: &auth.Chain{Cert: &auth.Cert{}},
			ctx: context.Background(), wantCode: codes.Unauthenticated,
			wantMsg: []string{auth.ErrNoCredentials.Error(), "client certificate signed by --client-ca"},
		},
		{
			name: "no credentials, tokens expected", chain: &auth.Chain{Cert: &auth.Cert{}, Kube: auth.NewKube(nil, "")},
			ctx: context.Background(), wantCode: codes.Unauthenticated,
			wantMsg: []string{auth.ErrNoCredentials.Error(), "--client-ca", "or", "service-account token", "MUSTER_TOKEN_FILE"},
		},
		{
			name: "an authorization header that is not a bearer token is no credential", chain: &auth.Chain{AllowAnonymous: true},
			ctx: withBearer(context.Background(), "Basic YWxpY2U6c2VjcmV0"), wantName: "anonymous",
		},
		{
			name: "bearer token without Kube", chain: &auth.Chain{Cert: &auth.Cert{}},
			ctx: withBearer(context.Background(), "Bearer abc"), wantCode: codes.Unauthenticated,
			wantMsg: []string{"bearer token", "does not check Kubernetes tokens", "--kubeconfig"},
		},
		{
			// A token sent to a coordinator that cannot check it is refused,
			// not ignored in favour of anonymity.
			name: "bearer token without Kube, anonymous allowed", chain: &auth.Chain{AllowAnonymous: true},
			ctx: withBearer(context.Background(), "Bearer abc"), wantCode: codes.Unauthenticated,
			wantMsg: []string{"does not check Kubernetes tokens"},
		},
		{
			name: "oversized bearer token", chain: &auth.Chain{Kube: auth.NewKube(nil, "")},
			ctx: withBearer(context.Background(), "Bearer "+strings.Repeat("x", 17<<10)), wantCode: codes.Unauthenticated,
			wantMsg: []string{"bearer token is", "bytes"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.chain.Authenticate(tc.ctx)
			if tc.wantName != "" {
				if err != nil || id == nil || id.Name != tc.wantName {
					t.Fatalf("Authenticate = %+v, %v; want identity %q", id, err, tc.wantName)
				}
				return
			}
			if status.Code(err) != tc.wantCode || id != nil {
				t.Fatalf("Authenticate = %+v, %v; want %v", id, err, tc.wantCode)
			}
			for _, w := range tc.wantMsg {
				if msg := status.Convert(err).Message(); !strings.Contains(msg, w) {
					t.Errorf("message %q does not name %q", msg, w)
				}
			}
		})
	}
}

func TestLimiter(t *testing.T) {
	// 0.01/s: no token comes back while the test runs, however slow the
	// machine.
	const burst = 3
	t.Run("anonymous is never limited", func(t *testing.T) {
		l := auth.NewLimiter(0.01, 1)
		for i := range 1000 {
			if err := l.Allow(anonymous); err != nil {
				t.Fatalf("call %d of an anonymous caller: %v, want no limit", i+1, err)
			}
		}
	})
	t.Run("over the burst", func(t *testing.T) {
		l := auth.NewLimiter(0.01, burst)
		for i := range burst {
			if err := l.Allow(member); err != nil {
				t.Fatalf("call %d of %d within the burst: %v", i+1, burst, err)
			}
		}
		err := l.Allow(member)
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("call %d past a burst of %d = %v, want ResourceExhausted", burst+1, burst, err)
		}
		for _, w := range []string{member.Name, "burst 3", "slow down"} {
			if msg := status.Convert(err).Message(); !strings.Contains(msg, w) {
				t.Errorf("message %q does not name %q", msg, w)
			}
		}
	})
	t.Run("separate buckets", func(t *testing.T) {
		l := auth.NewLimiter(0.01, burst)
		for range burst {
			_ = l.Allow(member)
		}
		if err := l.Allow(member); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("member past its burst: %v, want ResourceExhausted", err)
		}
		// Another identity, and the operator, each have a full bucket of
		// their own.
		other := &auth.Identity{Name: "pod ns1/g-1", Namespace: "ns1", Group: "g", Member: "g-1"}
		for _, id := range []*auth.Identity{other, operator} {
			for i := range burst {
				if err := l.Allow(id); err != nil {
					t.Fatalf("%s call %d after %s exhausted its bucket: %v", id.Name, i+1, member.Name, err)
				}
			}
			if err := l.Allow(id); status.Code(err) != codes.ResourceExhausted {
				t.Errorf("%s past its own burst: %v, want ResourceExhausted", id.Name, err)
			}
		}
	})
}
