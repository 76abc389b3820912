// Package health says whether a coordinator replica can do its job: a
// Checker probes the replica's etcd at an interval and publishes the result
// through the standard gRPC health service (what Kubernetes' grpc probes
// ask) and as /healthz and /readyz over HTTP.
package health

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Checker runs a probe at an interval and remembers the last result.
// Until the first probe passes it reports not ready.
type Checker struct {
	probe    func(context.Context) error
	interval time.Duration
	timeout  time.Duration
	services []string
	grpc     *health.Server

	mu       sync.Mutex
	ready    bool
	reason   string
	shutdown bool
}

// NewChecker returns a Checker that runs probe every interval, each run
// bounded by timeout. services are the gRPC service names whose health
// follows the probe; the overall status ("") always does.
func NewChecker(probe func(context.Context) error, interval, timeout time.Duration, services ...string) *Checker {
	c := &Checker{
		probe:    probe,
		interval: interval,
		timeout:  timeout,
		services: append([]string{""}, services...),
		grpc:     health.NewServer(),
		reason:   "not probed yet",
	}
	c.publish()
	return c
}

// GRPC is the gRPC health service to register on the replica's server.
func (c *Checker) GRPC() healthpb.HealthServer { return c.grpc }

// Run probes until ctx is done.
func (c *Checker) Run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		c.Probe(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Shutdown reports NOT_SERVING for good, so that a replica that is going
// away gets no new traffic while it drains.
func (c *Checker) Shutdown() {
	c.mu.Lock()
	c.ready, c.reason, c.shutdown = false, "shutting down", true
	c.mu.Unlock()
	c.grpc.Shutdown()
}

// Probe runs the probe once and publishes its result.
func (c *Checker) Probe(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, c.timeout)
	err := c.probe(pctx)
	cancel()
	c.mu.Lock()
	if c.shutdown {
		c.mu.Unlock()
		return
	}
	c.ready, c.reason = err == nil, ""
	if err != nil {
		c.reason = err.Error()
	}
	c.mu.Unlock()
	c.publish()
}

// Ready reports the last result and, when not ready, why.
func (c *Checker) Ready() (bool, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready, c.reason
}

func (c *Checker) publish() {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok, _ := c.Ready(); ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	for _, s := range c.services {
		c.grpc.SetServingStatus(s, st)
	}
}

// Register adds /healthz (the process answers: liveness) and /readyz (the
// last probe passed: readiness, 503 with the reason otherwise) to mux.
// Liveness deliberately ignores etcd: restarting every replica because
// etcd is briefly away would only add to the outage.
func (c *Checker) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, reason := c.Ready(); !ok {
			http.Error(w, "not ready: "+reason, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}
