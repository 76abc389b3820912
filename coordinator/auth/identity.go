// Package auth decides who is calling the coordinator and what they may
// do. The identity comes from the caller's credentials (a client
// certificate signed by the coordinator's client CA, or a Kubernetes
// token the apiserver vouches for), never from the fields of a request:
// a request names a group and a member, and the server checks that the
// caller is that member of that group.
package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Identity is an authenticated caller.
type Identity struct {
	// Name says who the caller is, for logs and messages
	// ("pod ns/name", "certificate muster://member/ns/g/m", "anonymous").
	Name string
	// Namespace, Group and Member bound a member's rights: it may act only
	// as Member, in group Group of Namespace. Empty for other callers.
	Namespace, Group, Member string
	// Addresses are the addresses a member may announce (its pod IPs, or
	// the IP and DNS names its certificate carries).
	Addresses []string
	// Operator may read and act on every group (a client certificate
	// issued as muster://operator).
	Operator bool
	// Anonymous is a caller of a coordinator that checks nothing
	// (--insecure, or loopback with no credentials configured): the
	// request's fields are taken at their word.
	Anonymous bool
	// User is a Kubernetes user that is not a pod (kubectl's credentials):
	// it may read what a SubjectAccessReview allows, and act as no member.
	User *User
}

// User is a Kubernetes user as the apiserver's TokenReview named it.
type User struct {
	Name   string
	UID    string
	Groups []string
	Extra  map[string][]string
}

// Sentinel errors, wrapped by the messages callers see.
var (
	// ErrNoCredentials is a call that carried neither a client certificate
	// nor a bearer token to a coordinator that requires one.
	ErrNoCredentials = errors.New("no credentials")
	// ErrNotAllowed is an authenticated caller acting outside its rights.
	ErrNotAllowed = errors.New("not allowed")
)

type ctxKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the caller's identity. A context that never went
// through the interceptors (an in-process call) is anonymous.
func FromContext(ctx context.Context) *Identity {
	if id, ok := ctx.Value(ctxKey{}).(*Identity); ok {
		return id
	}
	return &Identity{Name: "in-process", Anonymous: true}
}

// Unrestricted reports whether the identity may act on any group.
func (id *Identity) Unrestricted() bool { return id.Anonymous || id.Operator }

// ActAs checks that the caller may act as member in group name of
// namespace ns (join, report, leave, watch as that member).
func (id *Identity) ActAs(ns, name, member string) error {
	if id.Unrestricted() {
		return nil
	}
	if id.Member == "" {
		return status.Errorf(codes.PermissionDenied, "%s may act as no member (only a group's own pods or member certificates may): %v", id.Name, ErrNotAllowed)
	}
	if id.Namespace != ns || id.Group != name || id.Member != member {
		return status.Errorf(codes.PermissionDenied, "%s is member %q of %s and may act only as itself: not as %q of group %q: %v",
			id.Name, id.Member, id.GroupName(), member, ns+"/"+name, ErrNotAllowed)
	}
	return nil
}

// GroupName names the member's group for messages.
func (id *Identity) GroupName() string {
	if id.Group == "" {
		return "no group (its pod has no muster.dev/group label)"
	}
	return fmt.Sprintf("group %q", id.Namespace+"/"+id.Group)
}

// MayAnnounce checks an address a member announces at join.
func (id *Identity) MayAnnounce(addr string) error {
	if id.Unrestricted() || slices.Contains(id.Addresses, addr) {
		return nil
	}
	if len(id.Addresses) == 0 {
		return status.Errorf(codes.PermissionDenied, "%s has no address yet (a pod without an IP, or a certificate without IP or DNS names): %v", id.Name, ErrNotAllowed)
	}
	return status.Errorf(codes.PermissionDenied, "%s may announce only %s, not address %q: %v", id.Name, strings.Join(id.Addresses, ", "), addr, ErrNotAllowed)
}

// Authenticator finds the identity of a call, or says why there is none.
type Authenticator interface {
	Authenticate(ctx context.Context) (*Identity, error)
}

// Interceptors returns the gRPC server options that authenticate every
// call with a (and limit it with l, when not nil) before it reaches the
// service. The health service answers everyone: probes carry no
// credentials and learn nothing but SERVING.
func Interceptors(a Authenticator, l *Limiter) []grpc.ServerOption {
	check := func(ctx context.Context, method string) (context.Context, error) {
		if strings.HasPrefix(method, "/grpc.health.v1.Health/") {
			return ctx, nil
		}
		id, err := a.Authenticate(ctx)
		if err != nil {
			if _, ok := status.FromError(err); ok {
				return nil, err
			}
			return nil, status.Error(codes.Unauthenticated, err.Error())
		}
		if l != nil {
			if err := l.Allow(id); err != nil {
				return nil, err
			}
		}
		return NewContext(ctx, id), nil
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			ctx, err := check(ctx, info.FullMethod)
			if err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ctx, err := check(ss.Context(), info.FullMethod)
			if err != nil {
				return err
			}
			return h(srv, &identityStream{ServerStream: ss, ctx: ctx})
		}),
	}
}

type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *identityStream) Context() context.Context { return s.ctx }

// Chain tries each authenticator that finds credentials it knows in the
// call; with none, the call is anonymous if AllowAnonymous, else refused.
type Chain struct {
	Cert *Cert
	Kube *Kube
	// AllowAnonymous takes calls without credentials at their word.
	AllowAnonymous bool
}

// Authenticate implements Authenticator.
func (c *Chain) Authenticate(ctx context.Context) (*Identity, error) {
	if c.Cert != nil {
		if id, err := c.Cert.Authenticate(ctx); id != nil || err != nil {
			return id, err
		}
	}
	if tok := bearer(ctx); tok != "" {
		if c.Kube == nil {
			return nil, status.Error(codes.Unauthenticated, "a bearer token was sent, but this coordinator does not check Kubernetes tokens (start it with --kubeconfig or --in-cluster)")
		}
		return c.Kube.Identify(ctx, tok)
	}
	if c.AllowAnonymous {
		return &Identity{Name: "anonymous", Anonymous: true}, nil
	}
	var want []string
	if c.Cert != nil {
		want = append(want, "a client certificate signed by --client-ca")
	}
	if c.Kube != nil {
		want = append(want, "a Kubernetes service-account token (the agent's MUSTER_TOKEN_FILE)")
	}
	return nil, status.Error(codes.Unauthenticated, fmt.Sprintf("%v: this coordinator requires %s", ErrNoCredentials, strings.Join(want, " or ")))
}
