package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
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

func TestStreamsServerSentEventsUnbuffered(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release // the second event waits until the client saw the first
		fmt.Fprint(w, "data: second\n\n")
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
		if line != "data: first\n" {
			t.Fatalf("first line %q", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("first event held back by the proxy")
	}
	close(release)
	rest, _ := io.ReadAll(rd)
	if !strings.Contains(string(rest), "data: second") {
		t.Fatalf("rest %q lacks the second event", rest)
	}
}

func TestForwardsHTTP2Cleartext(t *testing.T) {
	up := httptest.NewServer(h2c.NewHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "proto %d", r.ProtoMajor)
	}), &http2.Server{}))
	defer up.Close()
	_, url := startProxy(t, Target{Ready: true, Upstream: strings.TrimPrefix(up.URL, "http://")})
	c := &http.Client{Transport: &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, n, a string, _ *tls.Config) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, n, a)
	}}}
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
