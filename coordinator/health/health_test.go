package health

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func status(t *testing.T, c *Checker, service string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	resp, err := c.GRPC().Check(context.Background(), &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatalf("check %q: %v", service, err)
	}
	return resp.Status
}

func readyz(t *testing.T, c *Checker) int {
	t.Helper()
	mux := http.NewServeMux()
	c.Register(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	return rec.Code
}

func TestChecker(t *testing.T) {
	var probeErr error
	c := NewChecker(func(context.Context) error { return probeErr }, time.Hour, time.Second, "svc")

	if got := status(t, c, "svc"); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("before the first probe: %s, want NOT_SERVING", got)
	}
	c.Probe(context.Background())
	for _, s := range []string{"", "svc"} {
		if got := status(t, c, s); got != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("probe passed: %q is %s, want SERVING", s, got)
		}
	}
	if code := readyz(t, c); code != http.StatusOK {
		t.Errorf("/readyz after a passing probe = %d, want 200", code)
	}

	probeErr = errors.New("etcd: no leader")
	c.Probe(context.Background())
	if got := status(t, c, "svc"); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("probe failed: %s, want NOT_SERVING", got)
	}
	if ok, reason := c.Ready(); ok || reason != "etcd: no leader" {
		t.Errorf("Ready() = %v, %q; want false and the probe's error", ok, reason)
	}
	if code := readyz(t, c); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz after a failing probe = %d, want 503", code)
	}

	// Once shut down, a passing probe changes nothing.
	c.Shutdown()
	probeErr = nil
	c.Probe(context.Background())
	if got := status(t, c, ""); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("after Shutdown: %s, want NOT_SERVING", got)
	}
}
