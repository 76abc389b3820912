package endpoint

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// runtimeEnv, when set to host:port, makes the test binary serve as the
// benchmark's model runtime instead of running tests: bin/agent launches
// it as the group's runtime command (the agent passes its environment on).
const runtimeEnv = "MUSTER_BENCH_ENDPOINT_RUNTIME"

const (
	// streamEvents events, streamGap apart, make one streamed completion:
	// about 100 ms, like a short generation of tokens.
	streamEvents = 20
	streamGap    = 5 * time.Millisecond
)

// completion is the fixed body of a non-streamed completion (about 300 B,
// the size of a short OpenAI-style answer).
var completion = `{"id":"cmpl-bench","object":"text_completion","model":"toy","choices":[{"index":0,"text":"` +
	strings.Repeat("muster ", 20) + `","finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":20,"total_tokens":25}}` + "\n"

func TestMain(m *testing.M) {
	if addr := os.Getenv(runtimeEnv); addr != "" {
		os.Exit(serveRuntime(addr))
	}
	os.Exit(m.Run())
}

// runtimeHandler answers POST /v1/completions with the fixed JSON body and
// POST /v1/stream with server-sent events, the first one at once.
func runtimeHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/completions", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", fmt.Sprint(len(completion)))
		_, _ = io.WriteString(w, completion)
	})
	mux.HandleFunc("POST /v1/stream", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		f := w.(http.Flusher)
		for i := range streamEvents {
			if i > 0 {
				select {
				case <-time.After(streamGap):
				case <-r.Context().Done():
					return
				}
			}
			fmt.Fprintf(w, "data: {\"index\":%d,\"text\":\"tok\"}\n\n", i)
			f.Flush()
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	})
	return mux
}

// serveRuntime runs the runtime until its parent (the agent) goes away, so
// that no runtime outlives a benchmark even when the agent is killed.
func serveRuntime(addr string) int {
	parent := os.Getppid()
	go func() {
		for range time.Tick(200 * time.Millisecond) {
			if os.Getppid() != parent {
				os.Exit(0)
			}
		}
	}()
	srv := &http.Server{Addr: addr, Handler: runtimeHandler(), ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintf(os.Stderr, "bench runtime on %s: %v\n", addr, err)
		return 1
	}
	return 0
}
