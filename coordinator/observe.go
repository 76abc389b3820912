package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/muster-dev/muster/coordinator/health"
	"github.com/muster-dev/muster/coordinator/metrics"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// How often the replica checks that etcd answers, and how long one check
// may take: a Kubernetes readiness probe (period 10s by default) then sees
// an etcd outage within one period.
const (
	healthInterval = 5 * time.Second
	healthTimeout  = 3 * time.Second
)

// startHealth registers the gRPC health service (NOT_SERVING until etcd
// answers a linearizable read, which needs a leader and a quorum) and, with
// MetricsListen, serves /metrics, /healthz and /readyz.
func (c *Coordinator) startHealth(log *slog.Logger) error {
	probeKey := c.cfg.Prefix + "health"
	c.health = health.NewChecker(func(ctx context.Context) error {
		if _, err := c.cli.Get(ctx, probeKey, clientv3.WithCountOnly()); err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		return nil
	}, healthInterval, healthTimeout, musterv1.Rendezvous_ServiceDesc.ServiceName)
	healthpb.RegisterHealthServer(c.grpc, c.health.GRPC())
	ctx, cancel := context.WithCancel(context.Background())
	c.stopHealth = cancel
	c.health.Probe(ctx)
	go c.health.Run(ctx)
	if c.cfg.MetricsListen == "" {
		return nil
	}
	reg := metrics.NewRegistry(c.Store, healthTimeout, c.timing)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	c.health.Register(mux)
	paths := "/metrics /healthz /readyz"
	if c.cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		// Contention is sampled from the start (--pprof only).
		runtime.SetMutexProfileFraction(100)
		runtime.SetBlockProfileRate(int(time.Millisecond))
		paths += " /debug/pprof/"
	}
	ln, err := net.Listen("tcp", c.cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("--metrics-listen %s: %w", c.cfg.MetricsListen, err)
	}
	c.metricsLis = ln
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.errc <- fmt.Errorf("metrics server: %w", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("metrics serving", "listen", ln.Addr().String(), "paths", paths)
	return nil
}

// MetricsAddr is where /metrics, /healthz and /readyz are served ("" without
// MetricsListen).
func (c *Coordinator) MetricsAddr() string {
	if c.metricsLis == nil {
		return ""
	}
	return c.metricsLis.Addr().String()
}
