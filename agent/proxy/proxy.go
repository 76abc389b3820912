// Package proxy serves a group's single inference endpoint from every
// member's agent. On the leader (rank 0) it reverse-proxies to the runtime's
// serving port; on the other ranks it forwards to the leader's endpoint, so
// a plain Service over all of the group's pods is one honest endpoint: it
// answers only while every rank is ready, and 503 with Retry-After while
// the group forms or restarts.
//
// HTTP/1.1 responses are streamed through unbuffered (server-sent events,
// chunked bodies) while the request body still flows (full duplex), and
// HTTP/2 cleartext (h2c, with prior knowledge) is accepted on the same port
// and forwarded as h2c, so gRPC works too. Both are net/http's own: its
// server's and transport's Protocols (unencrypted HTTP/2), not
// golang.org/x/net/http2.
package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
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
		dropH2CUpgrade(r.Out.Header)
		// ReverseProxy wraps the outgoing body in a reader of its own,
		// which hides from the transport that a body read whole is in
		// memory; handed the in-memory reader itself, the transport sends
		// headers and body in one write (see smallBody).
		if w, ok := r.In.Body.(wholeBody); ok {
			r.Out.Body = w.ReadCloser
		}
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
		Transport:      h2cTransport(),
		ErrorHandler:   p.upstreamError,
	}
	return p
}

// h2cTransport sends every request as HTTP/2 over plain TCP with prior
// knowledge (h2c): its Protocols hold unencrypted HTTP/2 alone, so an
// http:// URL gets no HTTP/1.1 and no upgrade. HTTP/2 runs all requests to
// a host over one connection, so there is no idle pool to size; the dialer
// is the transport's default (no dial timeout), and Accept-Encoding passes
// through as on HTTP/1.
func h2cTransport() *http.Transport {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	return &http.Transport{
		Protocols:          &protocols,
		DisableCompression: true,
	}
}

// dropH2CUpgrade removes an HTTP/1.1 client's offer to upgrade to h2c
// ("Upgrade: h2c", RFC 7540 section 3.2) from a request on its way to the
// upstream.
//
// net/http serves h2c with prior knowledge only, not through that upgrade
// (golang.org/x/net/http2/h2c, which the endpoint used before, did both;
// RFC 9113 has since deprecated the upgrade). Such a request is answered
// over HTTP/1.1, which RFC 7540 lets a server do. Left in, ReverseProxy
// would pass the offer on, and a runtime that took it would answer 101 and
// have the connection tunnelled to it, past the endpoint: no 503 while the
// group is not ready, no X-Muster headers, no body bounds.
func dropH2CUpgrade(h http.Header) {
	for _, v := range h.Values("Upgrade") {
		for proto := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(proto), "h2c") {
				h.Del("Upgrade")
				h.Del("Connection")
				h.Del("Http2-Settings")
				return
			}
		}
	}
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
	// A body cut by the endpoint's own bounds comes first: cutting it
	// cancels the request's context too (HTTP/1 cancels it on any failed
	// read), which would otherwise look like a client that went away.
	if b, ok := r.Context().Value(boundedBodyKey{}).(*boundedBody); ok {
		if cut := b.cutBy(); cut != nil {
			p.bodyCut(w, r, b, cut)
			return
		}
	}
	if errors.Is(err, context.Canceled) {
		return // the client went away
	}
	p.log.Warn("endpoint: upstream failed", "path", r.URL.Path, "upstream", p.Target().Upstream, "err", err)
	w.Header().Set("Retry-After", "1")
	http.Error(w, fmt.Sprintf("muster: upstream %s failed: %v", p.Target().Upstream, err), http.StatusBadGateway)
}

// The endpoint's bounds by default; Options documents each.
const (
	DefaultIdleTimeout  = 90 * time.Second
	DefaultMaxBodyBytes = 64 << 20
	DefaultBodyTimeout  = 60 * time.Second

	// smallBody is the largest request body, by its Content-Length, that
	// the endpoint reads before it forwards the request when all of it
	// has already arrived (the common case: a client sends a prompt with
	// its headers). The transport then sends headers and body in one
	// write; a body it has to stream makes it flush the headers on their
	// own first: one more write here and one more read in the runtime for
	// every completion, 6-8% of the endpoint's CPU a request (wrk on
	// loopback). A body only partly there streams on, as larger bodies
	// and bodies of unknown length do.
	smallBody = 32 << 10

	// readHeaderTimeout bounds the request line and headers, which no
	// legitimate client sends slowly.
	readHeaderTimeout = 10 * time.Second
)

// Options bound what a client of the endpoint can make an agent hold: the
// endpoint listens on every member, often reachable from outside the group.
// In each field 0 takes the default and a negative value turns the bound
// off.
//
// There is no bound on writing the response: a server-sent event stream
// lasts as long as the runtime generates tokens, so a write timeout would
// cut answers, not attacks.
type Options struct {
	// IdleTimeout closes a keep-alive connection that has had no request
	// for this long (HTTP/1.1), and an HTTP/2 connection without streams
	// for this long. Default DefaultIdleTimeout (90s, as Go's own
	// transports keep idle connections).
	IdleTimeout time.Duration
	// MaxBodyBytes is the largest request body the endpoint forwards. A
	// larger Content-Length is answered 413 before anything reaches the
	// runtime; a body without one is cut where it crosses the limit, and
	// answered 413 if the runtime has not answered yet. Default
	// DefaultMaxBodyBytes (64 MiB: room for long prompts and images
	// inline as base64).
	MaxBodyBytes int64
	// BodyTimeout is how long a request body may take to arrive in full,
	// counted from its headers; a body still arriving then is cut and
	// answered 408 if the runtime has not answered yet, so a client that
	// trickles a body cannot hold a connection (and one to the runtime)
	// open. The response is not bounded: it keeps streaming after the
	// body has ended. A client stream longer than this (bidirectional
	// gRPC, a live upload) needs a larger value or a negative one.
	// Default DefaultBodyTimeout (60s).
	BodyTimeout time.Duration
}

// withDefaults returns o with every 0 replaced by its default and every
// negative value by 0 (no bound).
func (o Options) withDefaults() Options {
	pick := func(v, def int64) int64 {
		switch {
		case v == 0:
			return def
		case v < 0:
			return 0
		}
		return v
	}
	return Options{
		IdleTimeout:  time.Duration(pick(int64(o.IdleTimeout), int64(DefaultIdleTimeout))),
		MaxBodyBytes: pick(o.MaxBodyBytes, DefaultMaxBodyBytes),
		BodyTimeout:  time.Duration(pick(int64(o.BodyTimeout), int64(DefaultBodyTimeout))),
	}
}

// bounded applies Options' body bounds to each request before the proxy
// sees it.
type bounded struct {
	p *Proxy
	o Options // withDefaults applied
}

func (h bounded) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.o.MaxBodyBytes > 0 && r.ContentLength > h.o.MaxBodyBytes {
		h.p.bodyCut(w, r, nil, &http.MaxBytesError{Limit: h.o.MaxBodyBytes})
		return
	}
	if r.Body == nil || r.Body == http.NoBody {
		// No body: nothing to bound, and no read deadline to set. On
		// HTTP/1 the server is already reading the connection in the
		// background (to notice a client that goes away); a deadline
		// would make that read fail, which cancels the request's context
		// and so a streaming answer.
		h.p.ServeHTTP(w, r)
		return
	}
	b := &boundedBody{body: r.Body, rc: http.NewResponseController(w), o: h.o}
	if h.o.MaxBodyBytes > 0 {
		b.body = http.MaxBytesReader(w, r.Body, h.o.MaxBodyBytes)
	}
	if h.o.BodyTimeout > 0 {
		// On HTTP/1 this is the connection's read deadline, on HTTP/2 the
		// stream's; either way only reading the body is bounded. Read
		// clears it when the body ends (see there).
		_ = b.rc.SetReadDeadline(time.Now().Add(h.o.BodyTimeout))
	}
	var body io.ReadCloser = b
	if r.ContentLength > 0 && r.ContentLength <= smallBody {
		head, whole, err := b.readArrived(r.ContentLength)
		if err != nil {
			h.p.bodyFailed(w, r, b, err)
			return
		}
		if whole {
			r.Body = wholeBody{io.NopCloser(bytes.NewReader(head))}
			h.p.ServeHTTP(w, r)
			return
		}
		// The rest is still on its way: stream it, as larger bodies.
		body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(head), b), b}
	}
	// The body is found again through the context: ReverseProxy hands its
	// error handler a copy of the request whose Body wraps this one.
	r = r.WithContext(context.WithValue(r.Context(), boundedBodyKey{}, b))
	r.Body = body
	h.p.ServeHTTP(w, r)
}

// wholeBody is a request body read whole before forwarding (see
// smallBody): an io.NopCloser over a *bytes.Reader, which net/http's
// transport knows to be in memory.
type wholeBody struct{ io.ReadCloser }

// boundedBodyKey is the context key of a request's *boundedBody.
type boundedBodyKey struct{}

// boundedBody is a request body under Options' bounds; it remembers why it
// was cut, so that the client is told that rather than a 502.
type boundedBody struct {
	body io.ReadCloser
	rc   *http.ResponseController
	o    Options

	mu  sync.Mutex
	cut error // *http.MaxBytesError, or a deadline error
}

func (b *boundedBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		// The whole body arrived in time: the deadline has done its work.
		// (On HTTP/1 the server clears it itself as it starts reading the
		// connection in the background; here it also stops an HTTP/2
		// stream's timer.)
		if b.o.BodyTimeout > 0 {
			_ = b.rc.SetReadDeadline(time.Time{})
		}
	default:
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) || errors.Is(err, os.ErrDeadlineExceeded) {
			b.mu.Lock()
			if b.cut == nil {
				b.cut = err
			}
			b.mu.Unlock()
		}
	}
	return n, err
}

func (b *boundedBody) Close() error { return b.body.Close() }

// readArrived reads, of a body of length n, what has arrived: it waits
// for the first bytes, not for the rest. whole says whether that was all
// of it (and the body ended there); if not, head is the part read, and
// the rest is left to read from b.
func (b *boundedBody) readArrived(n int64) (head []byte, whole bool, err error) {
	buf := make([]byte, n)
	k := 0
	for k == 0 && err == nil {
		k, err = b.Read(buf)
	}
	switch {
	case int64(k) < n && err == nil:
		return buf[:k], false, nil
	case int64(k) < n:
		return nil, false, err
	case err == nil:
		// One more read sees the end of the body, which net/http reports
		// without waiting once Content-Length bytes are in. Read then
		// clears the body's deadline.
		var more [1]byte
		if m, err := b.Read(more[:]); m > 0 || !errors.Is(err, io.EOF) {
			return nil, false, fmt.Errorf("request body did not end at its Content-Length of %d bytes: %v", n, err)
		}
	case !errors.Is(err, io.EOF):
		return nil, false, err
	}
	return buf, true, nil
}

// cutBy returns why the body was cut, or nil.
func (b *boundedBody) cutBy() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cut
}

// bodyFailed answers a request whose body could not be read whole: cut by
// a bound (bodyCut), or ended short by a client that went away.
func (p *Proxy) bodyFailed(w http.ResponseWriter, r *http.Request, b *boundedBody, err error) {
	if cut := b.cutBy(); cut != nil {
		p.bodyCut(w, r, b, cut)
		return
	}
	p.log.Info("endpoint: request body ended short", "path", r.URL.Path, "remote", r.RemoteAddr, "content_length", r.ContentLength, "err", err)
	http.Error(w, fmt.Sprintf("muster: the request body ended before its Content-Length of %d bytes", r.ContentLength), http.StatusBadRequest)
}

// bodyCut answers a request whose body broke a bound: 413 over
// MaxBodyBytes, 408 past BodyTimeout. b is nil when the body was refused
// before it was read.
func (p *Proxy) bodyCut(w http.ResponseWriter, r *http.Request, b *boundedBody, cut error) {
	var tooLarge *http.MaxBytesError
	if errors.As(cut, &tooLarge) {
		p.log.Info("endpoint: request body over the limit", "path", r.URL.Path, "remote", r.RemoteAddr, "limit_bytes", tooLarge.Limit, "content_length", r.ContentLength)
		http.Error(w, fmt.Sprintf("muster: the request body is larger than this endpoint's limit of %d bytes; send a smaller body, or raise the agent's --max-body-bytes", tooLarge.Limit), http.StatusRequestEntityTooLarge)
		return
	}
	p.log.Info("endpoint: request body too slow, cut", "path", r.URL.Path, "remote", r.RemoteAddr, "body_timeout", b.o.BodyTimeout)
	http.Error(w, fmt.Sprintf("muster: the request body did not arrive within %s; send it faster, or raise the agent's endpoint body timeout", b.o.BodyTimeout), http.StatusRequestTimeout)
}

// Server serves a Proxy on addr (HTTP/1.1 and h2c with prior knowledge)
// until Shutdown.
type Server struct {
	srv *http.Server
	lis net.Listener
}

// Listen binds addr and starts serving p with the default Options.
func Listen(addr string, p *Proxy) (*Server, error) {
	return ListenWith(addr, p, Options{})
}

// ListenWith binds addr and starts serving p under o's bounds.
func ListenWith(addr string, p *Proxy, o Options) (*Server, error) {
	o = o.withDefaults()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("endpoint: listen on %s: %w", addr, err)
	}
	// HTTP/1.1 and unencrypted HTTP/2 on the one port: a connection that
	// opens with the HTTP/2 preface is served as HTTP/2, any other as
	// HTTP/1.1. (An HTTP/1.1 "Upgrade: h2c" stays HTTP/1.1: see
	// dropH2CUpgrade.)
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           bounded{p: p, o: o},
		Protocols:         &protocols,
		ReadHeaderTimeout: readHeaderTimeout,
		// IdleTimeout bounds HTTP/2 connections too: net/http's HTTP/2
		// server has no idle timeout of its own (http.HTTP2Config has
		// none) and takes this one (TestIdleConnectionClosed,
		// TestIdleHTTP2ConnectionClosedAfterRequests). No HTTP2 config:
		// the endpoint set no other HTTP/2 setting before either, and
		// net/http's defaults are x/net's.
		IdleTimeout: o.IdleTimeout,
		// No ReadTimeout: bounded sets BodyTimeout as a read deadline on
		// each request that has a body, from its headers to its end, which
		// bounds the body alone (ReadTimeout also counts the headers) and
		// lets the endpoint answer 408 for it. No WriteTimeout: see
		// Options.
	}
	go func() { _ = srv.Serve(lis) }()
	return &Server{srv: srv, lis: lis}, nil
}

// Addr is the address the endpoint listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Shutdown stops accepting requests and waits, up to ctx's deadline, for
// those in flight to finish (drain on SIGTERM). HTTP/2 connections are
// told so with a GOAWAY, and their streams in flight are waited for too.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		s.srv.Close()
	}
	return err
}
