package coordinator_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/muster-dev/muster/coordinator/testcoord"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// probes asks a replica what Kubernetes' probes would ask it.
type probes struct {
	t       *testing.T
	health  healthpb.HealthClient
	metrics string // http://host:port
}

func newProbes(t *testing.T, grpcAddr, metricsAddr string) *probes {
	t.Helper()
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", grpcAddr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &probes{t: t, health: healthpb.NewHealthClient(conn), metrics: "http://" + metricsAddr}
}

// grpcStatus is the gRPC health status of service ("" is the whole server).
func (p *probes) grpcStatus(service string) healthpb.HealthCheckResponse_ServingStatus {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := p.health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		p.t.Fatalf("grpc health check of %q: %v", service, err)
	}
	return resp.Status
}

// get returns the status code and body of GET path on the metrics listener.
func (p *probes) get(path string) (int, string) {
	p.t.Helper()
	resp, err := http.Get(p.metrics + path)
	if err != nil {
		p.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatalf("GET %s: read body: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// eventually polls cond every 100ms until it holds or wait passes.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s; last: %s", what, wait, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestHealthAndMetricsWhileEtcdServes(t *testing.T) {
	cfg := testcoord.Config(t)
	cfg.MetricsListen = "127.0.0.1:0"
	c := testcoord.Start(t, cfg)
	p := newProbes(t, c.Addr(), c.MetricsAddr())

	for _, svc := range []string{"", musterv1.Rendezvous_ServiceDesc.ServiceName} {
		if got := p.grpcStatus(svc); got != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("grpc health of %q = %s, want SERVING once etcd answers", svc, got)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := p.get(path); code != http.StatusOK {
			t.Errorf("GET %s = %d %q, want 200", path, code, body)
		}
	}
	if code, body := p.get("/metrics"); code != http.StatusOK || !strings.Contains(body, `muster_groups{phase="Waiting"} 0`) {
		t.Errorf("GET /metrics with no groups = %d, want 200 and muster_groups{phase=\"Waiting\"} 0 in:\n%s", code, body)
	}

	// One of two members joins: the group waits at its barrier.
	m := newMember(t, testcoord.Client(t, c.Addr()), "g", "m0", "127.0.0.2", 2, ord(0))
	m.join(0)
	for _, want := range []string{
		`muster_groups{phase="Waiting"} 1`,
		`muster_group_size{group="g",namespace="test"} 2`,
		`muster_group_members_joined{group="g",namespace="test"} 1`,
		`muster_group_restarts_total{group="g",namespace="test"} 0`,
	} {
		if _, body := p.get("/metrics"); !strings.Contains(body, want) {
			t.Errorf("GET /metrics after one of two joined: no %s in:\n%s", want, body)
		}
	}
	newMember(t, testcoord.Client(t, c.Addr()), "g", "m1", "127.0.0.3", 2, ord(1)).join(0)
	eventually(t, "group g Running in /metrics", func() (bool, string) {
		_, body := p.get("/metrics")
		return strings.Contains(body, `muster_groups{phase="Running"} 1`) &&
			strings.Contains(body, `muster_group_members_joined{group="g",namespace="test"} 2`), body
	})
}

func TestHealthNotServingWithoutEtcd(t *testing.T) {
	etcd := testcoord.EtcdCluster(t, 1)[0]
	cfg := testcoord.Config(t)
	cfg.EtcdEndpoints = []string{etcd.ClientURL}
	cfg.MetricsListen = "127.0.0.1:0"
	c := testcoord.Start(t, cfg)
	p := newProbes(t, c.Addr(), c.MetricsAddr())
	if got := p.grpcStatus(""); got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("grpc health with etcd up = %s, want SERVING", got)
	}

	etcd.Close()
	eventually(t, "grpc health NOT_SERVING after etcd stopped", func() (bool, string) {
		got := p.grpcStatus(musterv1.Rendezvous_ServiceDesc.ServiceName)
		return got == healthpb.HealthCheckResponse_NOT_SERVING, got.String()
	})
	if code, body := p.get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "etcd") {
		t.Errorf("GET /readyz without etcd = %d %q, want 503 naming etcd", code, body)
	}
	// Liveness ignores etcd: restarting the replica would not bring it back.
	if code, body := p.get("/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz without etcd = %d %q, want 200", code, body)
	}
	// A scrape that cannot read etcd fails instead of reporting no groups.
	if code, _ := p.get("/metrics"); code != http.StatusInternalServerError {
		t.Errorf("GET /metrics without etcd = %d, want 500", code)
	}
}

func TestNotServingOnceClosed(t *testing.T) {
	cfg := testcoord.Config(t)
	cfg.MetricsListen = "127.0.0.1:0"
	c := testcoord.Start(t, cfg)
	conn, err := grpc.NewClient(c.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if first, err := stream.Recv(); err != nil || first.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first health status = %v, %v; want SERVING", first, err)
	}
	go c.Close()
	// A replica that is shutting down says so before its server goes away,
	// so Kubernetes stops sending it traffic.
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("health stream ended (%v) without NOT_SERVING", err)
		}
		if resp.Status == healthpb.HealthCheckResponse_NOT_SERVING {
			return
		}
	}
}
