package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startProxy(t *testing.T, target Target) (*Proxy, string) {
	t.Helper()
	p := New(quiet())
	p.Set(target)
	s, err := Listen("127.0.0.1:0", p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return p, "http://" + s.Addr()
}

func TestNotReadyAnswers503WithRetryAfter(t *testing.T) {
	_, url := startProxy(t, Target{Ready: false, Upstream: "127.0.0.1:1", Generation: 3})
	resp, err := http.Get(url + "/v1/predict")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || resp.Header.Get("X-Muster-Generation") != "3" {
		t.Fatalf("status %d, Retry-After %q, generation %q; want 503 with Retry-After and generation 3", resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get("X-Muster-Generation"))
	}
}

// Streams pass through unbuffered: server-sent events, and any body of
// unknown length (chunked tokens), which ReverseProxy flushes at once.
func TestStreamsUnbuffered(t *testing.T) {
	for _, tc := range []struct{ contentType, first, second string }{
		{"text/event-stream", "data: first\n\n", "data: second\n\n"},
		{"application/x-ndjson", `{"token":"first"}` + "\n", `{"token":"second"}` + "\n"},
	} {
		t.Run(tc.contentType, func(t *testing.T) {
			release := make(chan struct{})
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tc.contentType)
				fmt.Fprint(w, tc.first)
				w.(http.Flusher).Flush()
				<-release // the second part waits until the client saw the first
				fmt.Fprint(w, tc.second)
			}))
			defer up.Close()
			_, url := startProxy(t, Target{Ready: true, Upstream: strings.TrimPrefix(up.URL, "http://")})
			resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"stream":true}`))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			rd := bufio.NewReader(resp.Body)
			got := make(chan string, 1)
			go func() {
				line, _ := rd.ReadString('\n')
				got <- line
			}()
			select {
			case line := <-got:
				if want, _, _ := strings.Cut(tc.first, "\n"); line != want+"\n" {
					t.Fatalf("first line %q, want %q", line, want+"\n")
				}
			case <-time.After(10 * time.Second):
				close(release)
				t.Fatal("first part held back by the proxy")
			}
			close(release)
			rest, _ := io.ReadAll(rd)
			if !strings.Contains(string(rest), strings.TrimSpace(tc.second)) {
				t.Fatalf("rest %q lacks the second part", rest)
			}
		})
	}
}

// The request body keeps flowing while the response streams back (full
// duplex). Without that, writing the response headers made the server
// drain and close the request body, and the transport, whose read of the
// body then failed, tore down the upstream connection: streams were cut
// right after their headers (unexpected EOF). Here the upstream answers
// before it has read the body, which makes that ordering certain instead
// of a race.
func TestRequestBodyFlowsWhileResponseStreams(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "data: got %q err %v\n\n", b, err)
	}))
	defer up.Close()
	_, url := startProxy(t, Target{Ready: true, Upstream: strings.TrimPrefix(up.URL, "http://")})

	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPost, url+"/v1/completions", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = int64(len("hello world"))
	go pw.Write([]byte("hello "))
	type result struct {
		resp *http.Response
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		got <- result{resp, err}
	}()
	var resp *http.Response
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatal(r.err)
		}
		resp = r.resp
	case <-time.After(5 * time.Second):
		pw.CloseWithError(errors.New("test gave up"))
		t.Fatal("no response headers while the request body was still being sent: the proxy waited for the whole body")
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	if line, err := rd.ReadString('\n'); line != "data: first\n" {
		t.Fatalf("first line %q (%v)", line, err)
	}
	pw.Write([]byte("world"))
	pw.Close()
	rest, err := io.ReadAll(rd)
	if err != nil || !strings.Contains(string(rest), `data: got "hello world" err <nil>`) {
		t.Fatalf("after the first event: %q, read error %v; want the upstream to get the whole body and the stream to end cleanly", rest, err)
	}
}

// Accept-Encoding reaches the runtime as the client sent it, and a
// compressed answer reaches the client as the runtime sent it: the proxy
// neither asks for gzip on its own nor unzips.
func TestAcceptEncodingPassesThrough(t *testing.T) {
	up := h2cUpstream(func(w http.ResponseWriter, r *http.Request) {
		if ae := r.Header.Get("Accept-Encoding"); ae != "" {
			w.Header().Set("Content-Encoding", ae)
		}
		fmt.Fprintf(w, "accept-encoding=%q", r.Header.Get("Accept-Encoding"))
	})
	defer up.Close()
	_, url := startProxy(t, Target{Ready: true, Upstream: strings.TrimPrefix(up.URL, "http://")})
	h2 := h2cClientTransport()
	h2.DisableCompression = true
	defer h2.CloseIdleConnections()
	for _, tr := range []http.RoundTripper{&http.Transport{DisableCompression: true}, h2} {
		for _, ae := range []string{"", "gzip"} {
			req, _ := http.NewRequest(http.MethodGet, url+"/", nil)
			if ae != "" {
				req.Header.Set("Accept-Encoding", ae)
			}
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("accept-encoding=%q", ae); string(b) != want || resp.Header.Get("Content-Encoding") != ae {
				t.Errorf("HTTP/%d client sent Accept-Encoding %q: the runtime saw %s, the client got Content-Encoding %q; want %s and %q",
					resp.ProtoMajor, ae, b, resp.Header.Get("Content-Encoding"), want, ae)
			}
		}
	}
}

// acceptCounter counts the connections it accepts.
type acceptCounter struct {
	net.Listener
	accepts atomic.Int64
}

func (l *acceptCounter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepts.Add(1)
	}
	return c, err
}

// Connections to the upstream are kept for as many requests as were in
// flight at once, not only 64: a second wave of 100 concurrent requests
// dials nothing new.
func TestUpstreamConnectionsReusedBeyond64InFlight(t *testing.T) {
	const n = 100
	var (
		mu      sync.Mutex
		waiting int
		all     = make(chan struct{})
	)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Hold every request until all n are in flight, so that n
		// connections are open at once.
		mu.Lock()
		wait := all
		if waiting++; waiting%n == 0 {
			close(all)
			all = make(chan struct{})
		}
		mu.Unlock()
		select {
		case <-wait:
		case <-time.After(10 * time.Second):
		}
		fmt.Fprint(w, "ok")
	}))
	lis := &acceptCounter{Listener: up.Listener}
	up.Listener = lis
	up.Start()
	defer up.Close()
	_, url := startProxy(t, Target{Ready: true, Upstream: strings.TrimPrefix(up.URL, "http://")})
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	defer c.CloseIdleConnections()
	for wave := range 2 {
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := c.Get(url + "/")
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}()
		}
		wg.Wait()
		if got := lis.accepts.Load(); got != n {
			t.Fatalf("after wave %d of %d concurrent requests the upstream accepted %d connections; want %d (one per request in flight, then reused)", wave+1, n, got, n)
		}
	}
}

// writeCounter counts the writes on every connection it accepts.
type writeCounter struct {
	net.Listener
	writes atomic.Int64
}

func (l *writeCounter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	return countedConn{c, &l.writes}, err
}

type countedConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countedConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// A small response of known length leaves the proxy in one write, headers
// and body together (flushing each write, FlushInterval -1, cost a second
// write), and without a fresh 32 KiB copy buffer (a BufferPool lends it).
func TestSmallResponseOneWriteNoCopyBuffer(t *testing.T) {
	body := strings.Repeat("x", 300)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, body)
	}))
	defer up.Close()
	p := New(quiet())
	p.Set(Target{Ready: true, Upstream: strings.TrimPrefix(up.URL, "http://")})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis := &writeCounter{Listener: l}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: p, Protocols: &protocols}
	go srv.Serve(lis)
	defer srv.Close()
	const n = 50
	c := &http.Client{}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		resp, err := c.Post("http://"+l.Addr().String()+"/v1/completions", "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != body {
			t.Fatalf("body %q, want the upstream's %d bytes", b, len(body))
		}
	}
	runtime.ReadMemStats(&after)
	if got := lis.writes.Load(); got != n {
		t.Errorf("%d writes for %d responses of known length; want one each", got, n)
	}
	// Client, proxy and upstream together allocate about 15 KiB a request;
	// a copy buffer per response would add 32 KiB. (Not under -race: see
	// raceEnabled.)
	if per := (after.TotalAlloc - before.TotalAlloc) / n; per > 32<<10 && !raceEnabled {
		t.Errorf("%d bytes allocated per request; want under 32 KiB (is the copy buffer pooled?)", per)
	}
}

func TestForwardsHTTP2Cleartext(t *testing.T) {
	up := h2cUpstream(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "proto %d", r.ProtoMajor)
	})
	defer up.Close()
	_, url := startProxy(t, Target{Ready: true, Upstream: strings.TrimPrefix(up.URL, "http://")})
	c := h2cClient()
	defer c.CloseIdleConnections()
	resp, err := c.Get(url + "/grpc.health.v1.Health/Check")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.ProtoMajor != 2 || string(b) != "proto 2" {
		t.Fatalf("client saw HTTP/%d and upstream said %q; want HTTP/2 end to end", resp.ProtoMajor, b)
	}
}

func TestUpstreamDownIs502AndShutdownDrains(t *testing.T) {
	p, url := startProxy(t, Target{Ready: true, Upstream: "127.0.0.1:1"})
	resp, err := http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d with the upstream down, want 502", resp.StatusCode)
	}

	// A request in flight when shutdown starts still completes.
	started := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(300 * time.Millisecond)
		fmt.Fprint(w, "done")
	}))
	defer up.Close()
	p.Set(Target{Ready: true, Upstream: strings.TrimPrefix(up.URL, "http://")})
	s, err := Listen("127.0.0.1:0", p)
	if err != nil {
		t.Fatal(err)
	}
	result := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + s.Addr() + "/slow")
		if err != nil {
			result <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		result <- string(b)
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if got := <-result; got != "done" {
		t.Fatalf("in-flight request got %q, want it drained to completion", got)
	}
}

// Shutdown waits for HTTP/2 streams in flight as for HTTP/1 requests: the
// connection gets a GOAWAY and its streams finish. (Until the endpoint
// served h2c with net/http's own server, HTTP/2 connections were hijacked
// from it, and Shutdown returned without them.)
func TestShutdownDrainsHTTP2(t *testing.T) {
	started := make(chan struct{})
	var answered atomic.Int64 // when the upstream finished, in UnixNano
	up := h2cUpstream(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(300 * time.Millisecond)
		fmt.Fprint(w, "done")
		answered.Store(time.Now().UnixNano())
	})
	defer up.Close()
	p := New(quiet())
	p.Set(Target{Ready: true, Upstream: strings.TrimPrefix(up.URL, "http://")})
	s, err := Listen("127.0.0.1:0", p)
	if err != nil {
		t.Fatal(err)
	}
	c := h2cClient()
	defer c.CloseIdleConnections()
	result := make(chan string, 1)
	go func() {
		resp, err := c.Get("http://" + s.Addr() + "/slow")
		if err != nil {
			result <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		result <- fmt.Sprintf("HTTP/%d %s", resp.ProtoMajor, b)
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	shutDown := time.Now()
	if a := answered.Load(); a == 0 || shutDown.UnixNano() < a {
		t.Error("Shutdown returned before the HTTP/2 request in flight was answered; want it drained first")
	}
	select {
	case got := <-result:
		if got != "HTTP/2 done" {
			t.Fatalf("in-flight HTTP/2 request got %q, want it drained to completion", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the in-flight HTTP/2 request got no answer")
	}
}

// An HTTP/1.1 request that offers to upgrade to h2c (RFC 7540 section
// 3.2) is answered over HTTP/1.1, without the offer reaching the runtime;
// other upgrades (WebSocket) still pass through. net/http serves h2c with
// prior knowledge only (see dropH2CUpgrade).
func TestH2CUpgradeAnsweredOverHTTP1(t *testing.T) {
	tests := []struct {
		name, headers string
		want          string // the Upgrade header the runtime sees
	}{
		{"h2c", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n", ""},
		{"websocket", "Connection: Upgrade\r\nUpgrade: websocket\r\n", "websocket"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			seen := make(chan http.Header, 1)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen <- r.Header.Clone()
				fmt.Fprintf(w, "proto %d", r.ProtoMajor)
			}))
			defer up.Close()
			_, url := startProxy(t, Target{Ready: true, Upstream: strings.TrimPrefix(up.URL, "http://")})
			c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: endpoint\r\n%s\r\n", tc.headers)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 || string(b) != "proto 1" {
				t.Fatalf("%s, HTTP/%d.%d, body %q; want 200 over HTTP/1.1 with the runtime's answer", resp.Status, resp.ProtoMajor, resp.ProtoMinor, b)
			}
			h := <-seen
			if got := h.Get("Upgrade"); got != tc.want || (tc.want == "" && h.Get("Http2-Settings") != "") {
				t.Fatalf("the runtime saw Upgrade %q, HTTP2-Settings %q; want Upgrade %q", got, h.Get("Http2-Settings"), tc.want)
			}
		})
	}
}

// BenchmarkSmallResponse forwards small completions of known length; its
// B/op and allocs/op (client, proxy and upstream together, all in this
// process) show the proxy's per-request cost without the noise of CPU
// timing on a shared machine.
func BenchmarkSmallResponse(b *testing.B) {
	body := strings.Repeat("x", 300)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, body)
	}))
	defer up.Close()
	p := New(quiet())
	p.Set(Target{Ready: true, Upstream: strings.TrimPrefix(up.URL, "http://")})
	s, err := Listen("127.0.0.1:0", p)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	url := "http://" + s.Addr() + "/v1/completions"
	c := &http.Client{}
	b.ReportAllocs()
	for b.Loop() {
		resp, err := c.Post(url, "application/json", strings.NewReader(`{}`))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}
