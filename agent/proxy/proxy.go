// Package proxy serves a group's single inference endpoint from every
// member's agent. On the leader (rank 0) it reverse-proxies to the runtime's
// serving port; on the other ranks it forwards to the leader's endpoint, so
// a plain Service over all of the group's pods is one honest endpoint: it
// answers only while every rank is ready, and 503 with Retry-After while
// the group forms or restarts.
//
// HTTP/1.1 responses are streamed through unbuffered (server-sent events,
// chunked bodies) while the request body still flows (full duplex), and
// HTTP/2 cleartext (h2c) is accepted and forwarded as h2c, so gRPC works
// too.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
)

// Target is where the endpoint currently sends requests.
type Target struct {
	// Ready is true while every rank of the group is ready.
	Ready bool
	// Upstream is host:port: the runtime on the leader, the leader's
	// endpoint elsewhere.
	Upstream string
	// Generation and Rank are reported in response headers.
	Generation int64
	Rank       int
}

// Proxy is the endpoint's handler; Set changes its target at any time.
type Proxy struct {
	log *slog.Logger

	mu     sync.RWMutex
	target Target

	h1 *httputil.ReverseProxy
	h2 *httputil.ReverseProxy
}

// New returns a proxy that answers 503 until Set gives it a ready target.
func New(log *slog.Logger) *Proxy {
	p := &Proxy{log: log}
	rewrite := func(r *httputil.ProxyRequest) {
		t := p.Target()
		r.SetURL(&url.URL{Scheme: "http", Host: t.Upstream})
		r.SetXForwarded()
		r.Out.Host = r.In.Host
	}
	// The answering member names the generation and its rank; set, not
	// added, so that a worker forwarding to the leader reports itself once.
	stamp := func(resp *http.Response) error {
		t := p.Target()
		resp.Header.Set("X-Muster-Generation", strconv.FormatInt(t.Generation, 10))
		resp.Header.Set("X-Muster-Rank", strconv.Itoa(t.Rank))
		return nil
	}
	// FlushInterval stays 0: ReverseProxy then flushes every write at once
	// for whatever streams (text/event-stream, and any body without a
	// Content-Length: chunked tokens, gRPC), so streams are not held in a
	// buffer, while a response of known length leaves in one write. With
	// -1 every response had its headers flushed on their own from a timer
	// goroutine and then its body: two writes and about 30% more CPU for
	// each small completion (wrk on loopback).
	p.h1 = &httputil.ReverseProxy{
		Rewrite:        rewrite,
		ModifyResponse: stamp,
		BufferPool:     copyBuffers,
		Transport: &http.Transport{
			DialContext: (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			// Keep as many idle connections as requests were in flight: an
			// inference endpoint runs hundreds of streams at once, and with
			// a cap of 64 every request beyond it dialled anew and left a
			// socket in TIME_WAIT (wrk -c256: about 30% more CPU a request).
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
			// Pass Accept-Encoding through as the client sent it. Otherwise
			// the transport asks a client's uncompressed answer of the
			// runtime gzipped, only to unzip it again here.
			DisableCompression: true,
		},
		ErrorHandler: p.upstreamError,
	}
	p.h2 = &httputil.ReverseProxy{
		Rewrite:        rewrite,
		ModifyResponse: stamp,
		BufferPool:     copyBuffers,
		Transport: &http2.Transport{
			AllowHTTP:          true,
			DisableCompression: true,
			DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			},
		},
		ErrorHandler: p.upstreamError,
	}
	return p
}

// bufferPool lends ReverseProxy its 32 KiB copy buffers; without one it
// allocates and zeroes a new buffer for every response: 32 KiB of garbage
// per request, two thirds of all that a small completion allocated.
type bufferPool struct{ p sync.Pool }

var copyBuffers = &bufferPool{p: sync.Pool{New: func() any { return new([32 << 10]byte) }}}

func (b *bufferPool) Get() []byte  { return b.p.Get().(*[32 << 10]byte)[:] }
func (b *bufferPool) Put(s []byte) { b.p.Put((*[32 << 10]byte)(s)) }

// Set replaces the target.
func (p *Proxy) Set(t Target) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t != p.target {
		p.log.Info("endpoint target", "ready", t.Ready, "upstream", t.Upstream, "generation", t.Generation)
	}
	p.target = t
}

// Target returns the current target.
func (p *Proxy) Target() Target {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.target
}

// ServeHTTP forwards r, or answers 503 while the group is not ready.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t := p.Target()
	if !t.Ready || t.Upstream == "" {
		w.Header().Set("X-Muster-Generation", strconv.FormatInt(t.Generation, 10))
		w.Header().Set("X-Muster-Rank", strconv.Itoa(t.Rank))
		w.Header().Set("Retry-After", "1")
		http.Error(w, "muster: the group is not ready (forming or restarting); retry shortly", http.StatusServiceUnavailable)
		return
	}
	if r.ProtoMajor == 2 {
		p.h2.ServeHTTP(w, r)
		return
	}
	// Full duplex: the request body keeps flowing to the upstream while the
	// response flows back. Without it the HTTP/1 server drains and closes
	// the request body as soon as the response headers are written; the
	// transport reads that body once more after its Content-Length (to
	// check there is no more), and when that read comes after the close
	// it fails and the transport tears down the upstream connection: a
	// streamed answer cut right after its headers (unexpected EOF), more
	// often the faster the runtime answers and the busier the machine.
	_ = http.NewResponseController(w).EnableFullDuplex()
	p.h1.ServeHTTP(w, r)
}

func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) {
		return // the client went away
	}
	p.log.Warn("endpoint: upstream failed", "path", r.URL.Path, "upstream", p.Target().Upstream, "err", err)
	w.Header().Set("Retry-After", "1")
	http.Error(w, fmt.Sprintf("muster: upstream %s failed: %v", p.Target().Upstream, err), http.StatusBadGateway)
}

// Server serves a Proxy on addr (HTTP/1.1 and h2c) until Shutdown.
type Server struct {
	srv *http.Server
	lis net.Listener
}

// Listen binds addr and starts serving p.
func Listen(addr string, p *Proxy) (*Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("endpoint: listen on %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           h2c.NewHandler(p, &http2.Server{}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = srv.Serve(lis) }()
	return &Server{srv: srv, lis: lis}, nil
}

// Addr is the address the endpoint listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Shutdown stops accepting requests and waits, up to ctx's deadline, for
// those in flight to finish (drain on SIGTERM).
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		s.srv.Close()
	}
	return err
}
