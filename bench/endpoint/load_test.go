package endpoint

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

const requestBody = `{"prompt":"hello","max_tokens":20}`

// client keeps enough idle connections that no load here ever reconnects.
func client() *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, DisableCompression: true},
	}
}

// sample is one target's measurements: latencies in µs and failures.
type sample struct {
	us       []float64
	failed   int
	firstErr string // what the first failure said
}

func (s *sample) fail(err error) {
	s.failed++
	if s.firstErr == "" {
		s.firstErr = err.Error()
	}
}

func post(ctx context.Context, c *http.Client, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(requestBody))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return c.Do(req)
}

// fixedRate sends POST /v1/completions to every base URL at rate requests
// per second each, for d, with vegeta's constant-rate attacker (open loop:
// a slow answer delays no later request and is not hidden, as wrk2 does;
// Debian has only the closed-loop wrk). Its static targeter takes the
// targets in turn (direct, muster, nginx, direct, ...), so a stall of the
// shared machine falls on every target alike.
func fixedRate(ctx context.Context, bases []string, rate int, d time.Duration) []sample {
	targets := make([]vegeta.Target, len(bases))
	index := map[string]int{}
	for i, b := range bases {
		targets[i] = vegeta.Target{Method: http.MethodPost, URL: b + "/v1/completions", Body: []byte(requestBody),
			Header: http.Header{"Content-Type": {"application/json"}}}
		index[targets[i].URL] = i
	}
	atk := vegeta.NewAttacker(vegeta.Timeout(10*time.Second), vegeta.KeepAlive(true),
		vegeta.Connections(1024), vegeta.Workers(64))
	stop := context.AfterFunc(ctx, func() { atk.Stop() })
	defer stop()
	pace := vegeta.Rate{Freq: rate * len(bases), Per: time.Second}
	out := make([]sample, len(bases))
	for r := range atk.Attack(vegeta.NewStaticTargeter(targets...), pace, d, "fixed-rate") {
		i, ok := index[r.URL]
		switch {
		case !ok:
			continue
		case r.Error != "":
			out[i].fail(errors.New(r.Error))
		case r.Code != http.StatusOK:
			out[i].fail(fmt.Errorf("status %d", r.Code))
		default:
			out[i].us = append(out[i].us, float64(r.Latency)/float64(time.Microsecond))
		}
	}
	return out
}

// ttfb streams n completions from each base URL's /v1/stream, conc at a
// time, taking turns between the targets, and returns per target the time
// from sending each request to reading its first event. A stream that
// fails or lacks any of its events counts as failed.
func ttfb(ctx context.Context, bases []string, n, conc int) []sample {
	c := client()
	defer c.CloseIdleConnections()
	k := len(bases)
	var (
		mu  sync.Mutex
		out = make([]sample, k)
		wg  sync.WaitGroup
		sem = make(chan struct{}, conc)
	)
	for i := range n * k {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			first, err := stream(ctx, c, bases[i%k]+"/v1/stream")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				out[i%k].fail(err)
				return
			}
			out[i%k].us = append(out[i%k].us, float64(first)/float64(time.Microsecond))
		}()
	}
	wg.Wait()
	return out
}

// stream reads one streamed completion and returns its time to first event.
func stream(ctx context.Context, c *http.Client, url string) (time.Duration, error) {
	t0 := time.Now()
	resp, err := post(ctx, c, url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %s", resp.Status)
	}
	rd := bufio.NewReader(resp.Body)
	var first time.Duration
	events := 0
	for {
		line, err := rd.ReadString('\n')
		if strings.HasPrefix(line, "data: ") {
			if events == 0 {
				first = time.Since(t0)
			}
			events++
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	if events != streamEvents+1 {
		return 0, fmt.Errorf("%d events, want %d and [DONE]", events, streamEvents)
	}
	return first, nil
}

// wrkScript makes wrk send the same POST as the other clients.
const wrkScript = `wrk.method = "POST"
wrk.body = '` + requestBody + `'
wrk.headers["Content-Type"] = "application/json"
`

var (
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	wrkSocket = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// wrk runs Debian's wrk (closed loop: each connection sends its next
// request when the last one is answered) against url and returns the
// requests per second and the failed requests and socket errors.
func wrk(b *testing.B, url string, threads, conns int, d time.Duration) (float64, int) {
	b.Helper()
	script := filepath.Join(b.TempDir(), "post.lua")
	if err := os.WriteFile(script, []byte(wrkScript), 0o644); err != nil {
		b.Fatal(err)
	}
	out, err := exec.Command("wrk", "-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns),
		"-d", fmt.Sprintf("%ds", int(d.Seconds())), "-s", script, url).CombinedOutput()
	if err != nil {
		b.Fatalf("wrk %s: %v\n%s", url, err, out)
	}
	m := wrkRPS.FindSubmatch(out)
	if m == nil {
		b.Fatalf("wrk %s: no Requests/sec in its output:\n%s", url, out)
	}
	rps, _ := strconv.ParseFloat(string(m[1]), 64)
	failed := 0
	if m := wrkNon2xx.FindSubmatch(out); m != nil {
		n, _ := strconv.Atoi(string(m[1]))
		failed += n
	}
	if m := wrkSocket.FindSubmatch(out); m != nil {
		for _, g := range m[1:] {
			n, _ := strconv.Atoi(string(g))
			failed += n
		}
	}
	return rps, failed
}
