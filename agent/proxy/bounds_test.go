package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// h2cUpstream is a runtime that speaks HTTP/1.1 and h2c, as the proxy
// forwards HTTP/2 requests as h2c.
func h2cUpstream(h http.HandlerFunc) *httptest.Server {
	s := httptest.NewUnstartedServer(h)
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	s.Config.Protocols = &protocols
	s.Start()
	return s
}

// startBounded serves a proxy to upstream (host:port) under o.
func startBounded(t *testing.T, upstream string, o Options) string {
	t.Helper()
	p := New(quiet())
	p.Set(Target{Ready: true, Upstream: upstream})
	s, err := ListenWith("127.0.0.1:0", p, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return s.Addr()
}

// h2cClient sends every request as HTTP/2 with prior knowledge.
//
// The endpoint's Shutdown waits for its HTTP/2 connections to close: it
// sends each a GOAWAY, and net/http's server closes an idle one a second
// later unless the client does first. So a test closes its client's idle
// connections (defer) before the endpoint's Shutdown in t.Cleanup, or
// waits that second.
func h2cClient() *http.Client {
	return &http.Client{Transport: h2cClientTransport()}
}

func h2cClientTransport() *http.Transport {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	return &http.Transport{Protocols: &protocols}
}

// What an HTTP/2 client sends first on a connection (RFC 9113 section
// 3.4): the preface, then a SETTINGS frame, here empty (length 0, type 4,
// no flags, stream 0).
const (
	h2Preface       = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	h2EmptySettings = "\x00\x00\x00\x04\x00\x00\x00\x00\x00"
)

// opaque hides a reader's length, so the request goes out without a
// Content-Length (chunked on HTTP/1).
type opaque struct{ io.Reader }

func TestOptionsDefaults(t *testing.T) {
	tests := []struct {
		name    string
		in, out Options
	}{
		{"zero takes the defaults", Options{}, Options{IdleTimeout: DefaultIdleTimeout, MaxBodyBytes: DefaultMaxBodyBytes, BodyTimeout: DefaultBodyTimeout}},
		{"set values stay", Options{IdleTimeout: time.Second, MaxBodyBytes: 10, BodyTimeout: time.Minute}, Options{IdleTimeout: time.Second, MaxBodyBytes: 10, BodyTimeout: time.Minute}},
		{"negative turns a bound off", Options{IdleTimeout: -1, MaxBodyBytes: -1, BodyTimeout: -1}, Options{}},
	}
	for _, tc := range tests {
		if got := tc.in.withDefaults(); got != tc.out {
			t.Errorf("%s: %+v.withDefaults() = %+v, want %+v", tc.name, tc.in, got, tc.out)
		}
	}
}

// A connection that carries no request for IdleTimeout is closed, on
// HTTP/1.1 keep-alive and on HTTP/2 alike.
func TestIdleConnectionClosed(t *testing.T) {
	const idle = 200 * time.Millisecond
	tests := []struct {
		name string
		// use sends something on c and reads the answer.
		use func(t *testing.T, c net.Conn, rd *bufio.Reader)
	}{
		{"HTTP/1.1 keep-alive", func(t *testing.T, c net.Conn, rd *bufio.Reader) {
			fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: endpoint\r\n\r\n")
			resp, err := http.ReadResponse(rd, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Close {
				t.Fatal("the server closes after the response anyway; the test shows nothing about idleness")
			}
		}},
		{"HTTP/2 cleartext", func(t *testing.T, c net.Conn, rd *bufio.Reader) {
			if _, err := io.WriteString(c, h2Preface+h2EmptySettings); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Not ready: the proxy answers at once, without an upstream.
			s, err := ListenWith("127.0.0.1:0", New(quiet()), Options{IdleTimeout: idle})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Shutdown(context.Background())
			c, err := net.Dial("tcp", s.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			rd := bufio.NewReader(c)
			tc.use(t, c, rd)
			// Whatever else the server sends (HTTP/2 settings, a GOAWAY),
			// the connection must then end, well before this deadline.
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.Copy(io.Discard, rd)
			if err != nil {
				t.Fatalf("the idle connection was not closed: %v", err)
			}
			if d := time.Since(start); d < idle {
				t.Fatalf("closed after %s, before the idle timeout of %s", d, idle)
			}
		})
	}
}

// readEnd notes when reading its connection first fails: the connection
// was closed, by the server or by the client after the server's GOAWAY.
type readEnd struct {
	net.Conn
	once  sync.Once
	ended chan<- time.Time
}

func (c *readEnd) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.once.Do(func() {
			select {
			case c.ended <- time.Now():
			default: // another connection's end came first
			}
		})
	}
	return n, err
}

// An HTTP/2 connection that has carried requests is closed IdleTimeout
// after the last of them, not before and not only when it never carried
// one: net/http's HTTP/2 server takes the http.Server's IdleTimeout (the
// endpoint once set it on x/net's http2.Server), and each stream restarts
// its timer.
func TestIdleHTTP2ConnectionClosedAfterRequests(t *testing.T) {
	const idle = 500 * time.Millisecond
	const gap = idle / 2
	s, err := ListenWith("127.0.0.1:0", New(quiet()), Options{IdleTimeout: idle})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ended := make(chan time.Time, 1)
	var dials atomic.Int64
	tr := h2cClientTransport()
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &readEnd{Conn: c, ended: ended}, nil
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	// Three requests gap apart: together longer than idle, each gap
	// shorter.
	var last time.Time
	for i := range 3 {
		if i > 0 {
			time.Sleep(gap)
		}
		last = time.Now()
		resp, err := c.Get("http://" + s.Addr() + "/")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("HTTP/%d; want HTTP/2", resp.ProtoMajor)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d connections for 3 requests %s apart; want one, open while it carries a request at least every %s", n, gap, idle)
	}
	select {
	case at := <-ended:
		if d := at.Sub(last); d < idle {
			t.Fatalf("closed %s after the last request began, before the idle timeout of %s", d, idle)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the HTTP/2 connection was still open 10s after its last request; want it closed after the idle timeout of %s", idle)
	}
}

// A body over MaxBodyBytes is answered 413 with the limit named; a known
// Content-Length over it never reaches the runtime.
func TestOversizedBodyIs413(t *testing.T) {
	const limit = 1024
	tests := []struct {
		name     string
		client   *http.Client
		size     int
		hideLen  bool
		status   int
		upstream bool // whether the runtime may see the request
	}{
		{"HTTP/1 Content-Length over", http.DefaultClient, limit + 1, false, http.StatusRequestEntityTooLarge, false},
		{"HTTP/1 chunked over", http.DefaultClient, 4 * limit, true, http.StatusRequestEntityTooLarge, true},
		{"HTTP/1 exactly the limit", http.DefaultClient, limit, false, http.StatusOK, true},
		{"HTTP/1 chunked exactly the limit", http.DefaultClient, limit, true, http.StatusOK, true},
		{"HTTP/2 Content-Length over", h2cClient(), 4 * limit, false, http.StatusRequestEntityTooLarge, false},
		{"HTTP/2 without length over", h2cClient(), 4 * limit, true, http.StatusRequestEntityTooLarge, true},
		{"HTTP/2 exactly the limit", h2cClient(), limit, false, http.StatusOK, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.client.CloseIdleConnections()
			called := make(chan struct{}, 1)
			up := h2cUpstream(func(w http.ResponseWriter, r *http.Request) {
				called <- struct{}{}
				b, err := io.ReadAll(r.Body)
				if err != nil {
					return
				}
				fmt.Fprintf(w, "got %d bytes", len(b))
			})
			defer up.Close()
			addr := startBounded(t, strings.TrimPrefix(up.URL, "http://"), Options{MaxBodyBytes: limit})
			var body io.Reader = bytes.NewReader(bytes.Repeat([]byte("x"), tc.size))
			if tc.hideLen {
				body = opaque{body}
			}
			resp, err := tc.client.Post("http://"+addr+"/v1/completions", "application/json", body)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, b, tc.status)
			}
			if tc.status == http.StatusRequestEntityTooLarge && !strings.Contains(string(b), "limit of 1024 bytes") {
				t.Errorf("413 says %q; want it to name the limit of 1024 bytes", b)
			}
			if tc.status == http.StatusOK && string(b) != fmt.Sprintf("got %d bytes", tc.size) {
				t.Errorf("body %q, want the runtime to get all %d bytes", b, tc.size)
			}
			if !tc.upstream && len(called) > 0 {
				t.Error("the runtime saw a request whose Content-Length was over the limit")
			}
		})
	}
}

// A body that trickles in slower than BodyTimeout allows is cut and
// answered 408; the runtime never gets it whole.
func TestSlowBodyIsCut(t *testing.T) {
	const timeout = 300 * time.Millisecond
	const size = 1000 // at a byte per 20ms: 20s, far past the timeout
	type result struct {
		n   int
		err error
	}
	tests := []struct {
		name string
		// send trickles a size-byte body, paced by tick, and returns the
		// status and body of the answer.
		send func(t *testing.T, addr string, tick <-chan time.Time, stop <-chan struct{}) (int, string)
	}{
		{"HTTP/1", func(t *testing.T, addr string, tick <-chan time.Time, stop <-chan struct{}) (int, string) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			fmt.Fprintf(c, "POST /v1/completions HTTP/1.1\r\nHost: endpoint\r\nContent-Length: %d\r\n\r\n", size)
			go func() {
				for range size {
					select {
					case <-tick:
					case <-stop:
						return
					}
					if _, err := c.Write([]byte("x")); err != nil {
						return
					}
				}
			}()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no answer to a body too slow: %v", err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}},
		{"HTTP/2", func(t *testing.T, addr string, tick <-chan time.Time, stop <-chan struct{}) (int, string) {
			pr, pw := io.Pipe()
			t.Cleanup(func() { pw.Close() })
			go func() {
				for range size {
					select {
					case <-tick:
					case <-stop:
						return
					}
					if _, err := pw.Write([]byte("x")); err != nil {
						return
					}
				}
			}()
			req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/completions", pr)
			req.ContentLength = size
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c := h2cClient()
			defer c.CloseIdleConnections()
			resp, err := c.Do(req.WithContext(ctx))
			if err != nil {
				t.Fatalf("no answer to a body too slow: %v", err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan result, 1)
			up := h2cUpstream(func(w http.ResponseWriter, r *http.Request) {
				b, err := io.ReadAll(r.Body)
				got <- result{len(b), err}
			})
			defer up.Close()
			addr := startBounded(t, strings.TrimPrefix(up.URL, "http://"), Options{BodyTimeout: timeout})
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			stop := make(chan struct{})
			defer close(stop)
			start := time.Now()
			status, body := tc.send(t, addr, tick.C, stop)
			if status != http.StatusRequestTimeout || !strings.Contains(body, "within 300ms") {
				t.Fatalf("status %d %q; want 408 naming the 300ms timeout", status, body)
			}
			if d := time.Since(start); d < timeout {
				t.Errorf("cut after %s, before the body timeout of %s", d, timeout)
			}
			select {
			case r := <-got:
				if r.err == nil || r.n == size {
					t.Errorf("the runtime read %d bytes, error %v; want the body cut short", r.n, r.err)
				}
			case <-time.After(10 * time.Second):
				t.Error("the runtime's request was still open 10s after the body was cut")
			}
		})
	}
}

// BodyTimeout bounds only the request body: an answer keeps streaming long
// after it, whether the request had a body or none (on HTTP/1 a read
// deadline left on the connection would cancel the answer).
func TestStreamOutlivesBodyTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	tests := []struct {
		name   string
		client *http.Client
		method string
		body   string
	}{
		{"HTTP/1 POST", http.DefaultClient, http.MethodPost, `{"stream":true}`},
		{"HTTP/1 GET", http.DefaultClient, http.MethodGet, ""},
		{"HTTP/2 POST", h2cClient(), http.MethodPost, `{"stream":true}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.client.CloseIdleConnections()
			release := make(chan struct{})
			up := h2cUpstream(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				w.Header().Set("Content-Type", "text/event-stream")
				fmt.Fprintf(w, "data: first %s\n\n", b)
				w.(http.Flusher).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
				fmt.Fprint(w, "data: second\n\n")
			})
			defer up.Close()
			defer func() {
				select {
				case <-release:
				default:
					close(release)
				}
			}()
			addr := startBounded(t, strings.TrimPrefix(up.URL, "http://"), Options{BodyTimeout: timeout})
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, _ := http.NewRequest(tc.method, "http://"+addr+"/v1/completions", body)
			resp, err := tc.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			rd := bufio.NewReader(resp.Body)
			if line, err := rd.ReadString('\n'); !strings.HasPrefix(line, "data: first") {
				t.Fatalf("first line %q (%v)", line, err)
			}
			// The condition under test is time itself: the body deadline
			// has passed, three times over.
			<-time.After(3 * timeout)
			close(release)
			rest, err := io.ReadAll(rd)
			if err != nil || !strings.Contains(string(rest), "data: second") {
				t.Fatalf("after the body timeout the stream gave %q, %v; want the second event and a clean end", rest, err)
			}
		})
	}
}

// A small request body is read whole before the request goes on, so the
// runtime gets headers and body in one write; a body still arriving streams
// through as before (TestRequestBodyFlowsWhileResponseStreams), and one
// that ends before any of it arrived is answered 400 without reaching the
// runtime.
func TestSmallBodyForwardedInOneWrite(t *testing.T) {
	const n = 20
	var seen atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		fmt.Fprintf(w, "got %q", b)
	}))
	defer up.Close()
	p := New(quiet())
	p.Set(Target{Ready: true, Upstream: strings.TrimPrefix(up.URL, "http://")})
	var writes atomic.Int64
	tr := p.h1.Transport.(*http.Transport)
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countedConn{c, &writes}, nil
	}
	s, err := ListenWith("127.0.0.1:0", p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	for i := range n {
		body := fmt.Sprintf(`{"prompt":"hello %d"}`, i)
		resp, err := http.Post("http://"+s.Addr()+"/v1/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("got %q", body); resp.StatusCode != http.StatusOK || string(b) != want {
			t.Fatalf("status %d %q, want 200 %q", resp.StatusCode, b, want)
		}
	}
	if got := writes.Load(); got != n {
		t.Errorf("%d writes to the runtime for %d small requests; want one each (headers and body together)", got, n)
	}

	// A body that ends before its first byte. (One that ends after a
	// first part has already gone on to the runtime, as a streamed body
	// does, and is answered 502.)
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "POST /v1/completions HTTP/1.1\r\nHost: endpoint\r\nContent-Length: 100\r\n\r\n")
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a body that ended short: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "Content-Length of 100") {
		t.Errorf("status %d %q; want 400 naming the Content-Length of 100", resp.StatusCode, b)
	}
	if got := seen.Load(); got != n {
		t.Errorf("the runtime saw %d requests, want %d: the one cut short must not reach it", got, n)
	}
}
