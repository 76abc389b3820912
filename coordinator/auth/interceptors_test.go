package auth_test

import (
	"context"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/coordinator/auth"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// whoami answers GetGroup and Watch with the caller's identity, as the
// interceptors put it in the context: in Group.FirstError, and in the
// one Progress event's WaitingFor.
type whoami struct {
	musterv1.UnimplementedRendezvousServer
}

func (whoami) GetGroup(ctx context.Context, _ *musterv1.GetGroupRequest) (*musterv1.Group, error) {
	return &musterv1.Group{FirstError: auth.FromContext(ctx).Name}, nil
}

func (whoami) Watch(_ *musterv1.WatchRequest, s grpc.ServerStreamingServer[musterv1.GroupEvent]) error {
	return s.Send(&musterv1.GroupEvent{Event: &musterv1.GroupEvent_Progress{Progress: &musterv1.Progress{
		WaitingFor: []string{auth.FromContext(s.Context()).Name}}}})
}

// serve starts a gRPC server on 127.0.0.1:0 with the interceptors of a
// and l, the health service and whoami, and returns a client of it.
func serve(t *testing.T, a auth.Authenticator, l *auth.Limiter) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := grpc.NewServer(auth.Interceptors(a, l)...)
	healthpb.RegisterHealthServer(s, health.NewServer())
	musterv1.RegisterRendezvousServer(s, whoami{})
	served := make(chan error, 1)
	go func() { served <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// whoIs calls GetGroup with token (none when "") and returns the name the
// server saw, or the call's error.
func whoIs(t *testing.T, cc *grpc.ClientConn, token string) (string, error) {
	t.Helper()
	ctx := testCtx(t)
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	g, err := musterv1.NewRendezvousClient(cc).GetGroup(ctx, &musterv1.GetGroupRequest{Group: &musterv1.GroupRef{Namespace: "ns1", Name: "llama"}})
	if err != nil {
		return "", err
	}
	return g.GetFirstError(), nil
}

func TestInterceptors(t *testing.T) {
	f := newFakeKube(t)
	kube := auth.NewKube(f.cs, "")
	cc := serve(t, &auth.Chain{Kube: kube}, nil)

	t.Run("health answers without credentials", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(cc).Check(testCtx(t), &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Health.Check without credentials = %v, %v; want SERVING", resp, err)
		}
	})

	tests := []struct {
		name, token string
		want        string // the identity the handler sees; else wantCode
		wantCode    codes.Code
		wantMsg     string
	}{
		{name: "no credentials", wantCode: codes.Unauthenticated, wantMsg: "service-account token"},
		{name: "pod token", token: tokPod, want: "pod ns1/g-0"},
		{name: "person's token", token: tokAlice, want: "user alice"},
		{name: "refused token", token: tokWrongAud, wantCode: codes.Unauthenticated, wantMsg: "invalid bearer token"},
		{name: "token of a recreated pod", token: tokPodOldUID, wantCode: codes.Unauthenticated, wantMsg: "deleted and made again"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := whoIs(t, cc, tc.token)
			if tc.want != "" {
				if err != nil || got != tc.want {
					t.Fatalf("GetGroup saw identity %q, err %v; want %q", got, err, tc.want)
				}
				return
			}
			if status.Code(err) != tc.wantCode || !strings.Contains(status.Convert(err).Message(), tc.wantMsg) {
				t.Fatalf("GetGroup = %q, %v; want %v naming %q", got, err, tc.wantCode, tc.wantMsg)
			}
		})
	}

	t.Run("streams carry the identity", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(testCtx(t), "authorization", "Bearer "+tokPod)
		s, err := musterv1.NewRendezvousClient(cc).Watch(ctx, &musterv1.WatchRequest{})
		if err != nil {
			t.Fatalf("Watch: %v", err)
		}
		ev, err := s.Recv()
		if err != nil || len(ev.GetProgress().GetWaitingFor()) != 1 || ev.GetProgress().GetWaitingFor()[0] != "pod ns1/g-0" {
			t.Fatalf("Watch event = %v, %v; want the handler to see pod ns1/g-0", ev, err)
		}
	})

	t.Run("streams without credentials are refused", func(t *testing.T) {
		s, err := musterv1.NewRendezvousClient(cc).Watch(testCtx(t), &musterv1.WatchRequest{})
		if err == nil {
			var ev *musterv1.GroupEvent
			ev, err = s.Recv()
			if err == nil {
				t.Fatalf("Watch without credentials delivered %v, want Unauthenticated", ev)
			}
		}
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("Watch without credentials = %v, want Unauthenticated", err)
		}
	})

	if n := f.reviewsOf(tokPod); n != 1 {
		t.Errorf("calls with one pod token made %d TokenReviews, want 1 (cached)", n)
	}
}

func TestInterceptorsAnonymousAndRateLimit(t *testing.T) {
	t.Run("anonymous allowed", func(t *testing.T) {
		cc := serve(t, &auth.Chain{AllowAnonymous: true}, auth.NewLimiter(0.01, 1))
		// The limiter leaves anonymous callers alone.
		for i := range 5 {
			if got, err := whoIs(t, cc, ""); err != nil || got != "anonymous" {
				t.Fatalf("call %d: GetGroup saw %q, err %v; want anonymous", i+1, got, err)
			}
		}
	})
	t.Run("identified callers are limited", func(t *testing.T) {
		f := newFakeKube(t)
		cc := serve(t, &auth.Chain{Kube: auth.NewKube(f.cs, "")}, auth.NewLimiter(0.01, 2))
		for i := range 2 {
			if got, err := whoIs(t, cc, tokPod); err != nil || got != "pod ns1/g-0" {
				t.Fatalf("call %d within the burst: %q, %v", i+1, got, err)
			}
		}
		if _, err := whoIs(t, cc, tokPod); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("call past the burst = %v, want ResourceExhausted", err)
		}
		// Health probes are neither authenticated nor limited.
		resp, err := healthpb.NewHealthClient(cc).Check(testCtx(t), &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Health.Check = %v, %v; want SERVING", resp, err)
		}
		// Another pod's token has its own bucket.
		if got, err := whoIs(t, cc, tokNoGroup); err != nil || got != "pod ns1/loner" {
			t.Fatalf("another identity after the first was limited: %q, %v", got, err)
		}
	})
}
