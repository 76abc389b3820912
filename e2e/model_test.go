package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tensor-parallel model (e2e/model/tp_server.py) served by groups of
// 1, 2 and 4 agents on 127.0.0.2..: every rank holds a shard of the
// weights and takes part in every forward pass; rank 0 serves HTTP.

func modelScript(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "model", "tp_server.py")
}

// modelCorpus trains the model's weights when they are missing (the first
// run: 10 to 20 s on one core), so that no group's time to ready includes
// training, and returns the text the model was trained on: greedy decoding
// recites it.
func modelCorpus(t *testing.T, py string) string {
	t.Helper()
	dir := filepath.Dir(modelScript(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, py, filepath.Join(dir, "train.py")).CombinedOutput()
	if err != nil {
		t.Fatalf("train.py: %v\n%s", err, out)
	}
	t.Logf("train.py (%.1fs): %s", time.Since(t0).Seconds(), strings.TrimSpace(string(out)))
	b, err := os.ReadFile(filepath.Join(dir, "corpus.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// modelPort is 8000 when 127.0.0.2:8000 is free, else a free port there
// (another test binary may hold 8000).
func modelPort(t *testing.T) int {
	t.Helper()
	for _, addr := range []string{"127.0.0.2:8000", "127.0.0.2:0"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		return port
	}
	t.Fatal("no free port on 127.0.0.2")
	return 0
}

var modelClient = &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second}

type topK struct {
	Token int     `json:"token"`
	Logit float64 `json:"logit"`
}

type predictResp struct {
	Outputs []struct {
		Argmax    []int  `json:"argmax"`
		NextToken int    `json:"next_token"`
		NextChar  string `json:"next_char"`
		TopK      []topK `json:"top_k"`
	} `json:"outputs"`
	WorldSize         int  `json:"world_size"`
	Generation        *int `json:"generation"`
	RanksParticipated int  `json:"ranks_participated"`
}

type completionResp struct {
	Text              string `json:"text"`
	TokenIDs          []int  `json:"token_ids"`
	WorldSize         int    `json:"world_size"`
	RanksParticipated int    `json:"ranks_participated"`
}

// encodeChars is the model's tokenizer: "\n" is 0, ASCII 32..126 are 1..95.
func encodeChars(s string) []int {
	var ids []int
	for _, c := range s {
		if c == '\n' {
			ids = append(ids, 0)
		} else {
			ids = append(ids, int(c)-31)
		}
	}
	return ids
}

func postModel(t *testing.T, url, body string) (int, []byte) {
	t.Helper()
	resp, err := modelClient.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: reading the body: %v", url, err)
	}
	return resp.StatusCode, b
}

// startModelGroup starts n agents running the model and waits until the
// leader's /health answers ok. It returns the agents and the time to ready.
func startModelGroup(t *testing.T, coord, py string, n, port int) ([]*proc, string, time.Duration) {
	t.Helper()
	t0 := time.Now()
	var agents []*proc
	for i := 0; i < n; i++ {
		agents = append(agents, start(t, filepath.Join(bins(t), "agent"), "run",
			"--coordinator", coord, "--group", fmt.Sprintf("tp-%d", n), "--size", fmt.Sprint(n),
			"--member-id", fmt.Sprintf("host-%d", i), "--address", fmt.Sprintf("127.0.0.%d", i+2),
			"--ordinal", fmt.Sprint(i), "--port", fmt.Sprint(port), "--stop-grace", "10s",
			"--", py, modelScript(t), "--port", fmt.Sprint(port)))
	}
	base := fmt.Sprintf("http://127.0.0.2:%d", port)
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := modelClient.Get(base + "/health")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				var h struct {
					Status    string `json:"status"`
					WorldSize int    `json:"world_size"`
					Rank      *int   `json:"rank"`
				}
				if err := json.Unmarshal(b, &h); err != nil || h.Status != "ok" || h.WorldSize != n || h.Rank == nil || *h.Rank != 0 {
					t.Fatalf("/health: %s (%v), want status ok, world_size %d, rank 0", b, err, n)
				}
				return agents, base, time.Since(t0)
			}
		}
		for i, a := range agents {
			select {
			case <-a.done:
				t.Fatalf("agent %d exited (%v) before the model served:\n%s", i, a.err, a.output())
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/health not ok within 60s (last error %v); leader's agent:\n%s", base, err, agents[0].output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// streamCompletion posts a streaming completion and returns the tokens,
// when each event arrived (since the request was sent) and whether the
// stream ended with [DONE].
func streamCompletion(t *testing.T, base, prompt string, maxTokens int) ([]string, []time.Duration, bool) {
	t.Helper()
	body := fmt.Sprintf(`{"prompt": %q, "max_tokens": %d, "stream": true}`, prompt, maxTokens)
	t0 := time.Now()
	resp, err := modelClient.Post(base+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("streaming completion: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("streaming completion: %s, Content-Type %q: %s", resp.Status, resp.Header.Get("Content-Type"), b)
	}
	var toks []string
	var at []time.Duration
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("stream line %q is not an SSE data line", line)
		}
		if data == "[DONE]" {
			for sc.Scan() {
				if sc.Text() != "" {
					t.Fatalf("data after [DONE]: %q", sc.Text())
				}
			}
			return toks, at, true
		}
		var ev struct {
			Token *string `json:"token"`
			Index int     `json:"index"`
		}
		if err := json.Unmarshal([]byte(data), &ev); err != nil || ev.Token == nil {
			t.Fatalf("stream event %q: %v", data, err)
		}
		if ev.Index != len(toks) {
			t.Fatalf("stream event %d has index %d", len(toks), ev.Index)
		}
		toks = append(toks, *ev.Token)
		at = append(at, time.Since(t0))
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading the stream: %v", err)
	}
	return toks, at, false
}

func TestTensorParallelModelServes(t *testing.T) {
	py := torchPython(t)
	coord := startCoordinator(t)
	port := modelPort(t)
	script := modelScript(t)

	inputs := [][]int{encodeChars("hello muster"), {1, 2, 3, 4, 5}, {0},
		encodeChars("a model too big for one machine serves like one pod")}
	predictTokens := 0
	for _, in := range inputs {
		predictTokens += len(in)
	}
	predictBody, _ := json.Marshal(map[string]any{"inputs": inputs, "top_k": 5})
	// The model recites corpus.txt: a prompt from it continues as it does
	// there (random weights answer noise). The first is also streamed; the
	// second is the demo's (e2e/demo.sh).
	corpus := modelCorpus(t, py)
	prompts := []struct {
		prompt    string
		maxTokens int
	}{{"muster ", 16}, {"muster makes a model too big for one machine", 20}}
	prompt, maxTokens := prompts[0].prompt, prompts[0].maxTokens

	var refPredict *predictResp
	refText := map[string]string{}
	var report []string
	for _, n := range []int{1, 2, 4} {
		ok := t.Run(fmt.Sprintf("world%d", n), func(t *testing.T) {
			agents, base, ready := startModelGroup(t, coord, py, n, port)
			agents[0].waitOutput(t, "runtime ready", 15*time.Second) // the agent's --port probe saw the server

			// Predict: same answers whatever the world size.
			var lat []time.Duration
			var pr predictResp
			for i := 0; i < 5; i++ {
				t0 := time.Now()
				code, b := postModel(t, base+"/v1/predict", string(predictBody))
				lat = append(lat, time.Since(t0))
				if code != http.StatusOK {
					t.Fatalf("/v1/predict: %d %s", code, b)
				}
				pr = predictResp{}
				if err := json.Unmarshal(b, &pr); err != nil {
					t.Fatalf("/v1/predict: %v: %s", err, b)
				}
			}
			if pr.WorldSize != n || pr.RanksParticipated != n || pr.Generation == nil || *pr.Generation != 0 || len(pr.Outputs) != 4 {
				t.Fatalf("/v1/predict: world_size %d, ranks_participated %d, generation %v, %d outputs; want %d, %d, 0, 4",
					pr.WorldSize, pr.RanksParticipated, pr.Generation, len(pr.Outputs), n, n)
			}
			if refPredict == nil {
				refPredict = &pr
			} else {
				comparePredictions(t, refPredict, &pr)
			}

			// Completions: the corpus's text, the same whatever the
			// world size; streamed, the same greedy text.
			var whole string // the completion of prompts[0], not streamed
			for i, p := range prompts {
				code, b := postModel(t, base+"/v1/completions", fmt.Sprintf(`{"prompt": %q, "max_tokens": %d}`, p.prompt, p.maxTokens))
				var cr completionResp
				if code != http.StatusOK || json.Unmarshal(b, &cr) != nil || len(cr.TokenIDs) != p.maxTokens || cr.RanksParticipated != n {
					t.Fatalf("/v1/completions: %d %s", code, b)
				}
				if !strings.Contains(corpus, p.prompt+cr.Text) {
					t.Errorf("completion of %q with %d ranks is %q: not how model/corpus.txt continues", p.prompt, n, cr.Text)
				}
				if ref, ok := refText[p.prompt]; !ok {
					refText[p.prompt] = cr.Text
				} else if cr.Text != ref {
					t.Errorf("completion of %q with %d ranks %q, with 1 rank %q", p.prompt, n, cr.Text, ref)
				}
				if i == 0 {
					whole = cr.Text
				}
			}
			toks, at, done := streamCompletion(t, base, prompt, maxTokens)
			if !done {
				t.Fatalf("stream ended without [DONE] after %d tokens", len(toks))
			}
			if len(toks) != maxTokens || strings.Join(toks, "") != whole {
				t.Fatalf("streamed %d tokens %q, want %d tokens %q", len(toks), strings.Join(toks, ""), maxTokens, whole)
			}
			first, last := at[0], at[len(at)-1]
			// Each token is a step of at least 30 ms (simulated decode
			// latency): a response buffered until the end would deliver
			// every event at once.
			if last-first < 300*time.Millisecond {
				t.Errorf("stream not incremental: first event at %s, last at %s", first, last)
			}

			// Bad requests: 400 with a JSON error, and the server lives on.
			for _, bad := range []struct{ path, body string }{
				{"/v1/predict", `{"inputs": [[1, 2,`},
				{"/v1/predict", `{"input": [1, 96]}`},
				{"/v1/predict", `{"tokens": [1]}`},
				{"/v1/completions", `{"prompt": "x", "max_tokens": 0}`},
				{"/v1/completions", `["prompt"]`},
			} {
				code, b := postModel(t, base+bad.path, bad.body)
				var e struct {
					Error string `json:"error"`
				}
				if code != http.StatusBadRequest || json.Unmarshal(b, &e) != nil || e.Error == "" {
					t.Errorf("POST %s %s: %d %s, want 400 with an error", bad.path, bad.body, code, b)
				}
			}
			if code, b := postModel(t, base+"/v1/predict", `{"input": [1, 2, 3]}`); code != http.StatusOK {
				t.Errorf("after bad requests: /v1/predict %d %s", code, b)
			}
			agents[0].waitOutput(t, "POST /v1/predict 200 tokens=", 5*time.Second) // the leader's request log

			if n == 2 {
				// A worker dies: the leader errors out of its next
				// collective, muster restarts the group in place, and the
				// model serves again (generation 1) with the same answers.
				pids := childPIDs(agents[1].cmd.Process.Pid)
				if len(pids) != 1 {
					t.Fatalf("agent 1 has runtime processes %v, want one", pids)
				}
				syscall.Kill(pids[0], syscall.SIGKILL)
				t0 := time.Now()
				healed := waitGeneration(t, base, string(predictBody), 1, agents)
				comparePredictions(t, refPredict, healed)
				report = append(report, fmt.Sprintf("world 2: rank 1 killed; serving again in generation 1 after %.1fs", time.Since(t0).Seconds()))
			}

			// SIGTERM to every agent: the leader tells the workers to exit,
			// every runtime and agent exits 0.
			for _, a := range agents {
				a.cmd.Process.Signal(syscall.SIGTERM)
			}
			t0 := time.Now()
			for i, a := range agents {
				if code := a.wait(t, 30*time.Second); code != 0 {
					t.Errorf("agent %d exited %d after SIGTERM:\n%s", i, code, a.output())
				}
			}
			stopped := time.Since(t0)
			if !strings.Contains(agents[0].output(), "stopping on signal") {
				t.Errorf("leader did not log its shutdown:\n%s", agents[0].output())
			}

			slices.Sort(lat)
			report = append(report, fmt.Sprintf("world %d: /health ok %.1fs after start; predict (4 seqs, %d tokens) p50 %.1fms; "+
				"stream first token %.0fms, then %.1fms/token; all agents exited 0 %.2fs after SIGTERM",
				n, ready.Seconds(), predictTokens, float64(lat[len(lat)/2].Microseconds())/1000,
				float64(first.Microseconds())/1000, float64((last-first).Microseconds())/1000/float64(len(at)-1), stopped.Seconds()))
		})
		if !ok {
			break
		}
	}
	var texts []string
	for _, p := range prompts {
		texts = append(texts, strconv.Quote(p.prompt)+" -> "+strconv.Quote(refText[p.prompt]))
	}
	t.Logf("%s (completions %s):\n%s", filepath.Base(script), strings.Join(texts, ", "), strings.Join(report, "\n"))
}

// childPIDs lists the children of pid (Linux).
func childPIDs(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(s); err == nil {
				out = append(out, p)
			}
		}
	}
	return out
}

// waitGeneration polls /v1/predict until it answers from generation gen.
func waitGeneration(t *testing.T, base, body string, gen int, agents []*proc) *predictResp {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		resp, err := modelClient.Post(base+"/v1/predict", "application/json", strings.NewReader(body))
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = fmt.Sprintf("%s %s", resp.Status, b)
			var pr predictResp
			if resp.StatusCode == http.StatusOK && json.Unmarshal(b, &pr) == nil && pr.Generation != nil && *pr.Generation == gen {
				if pr.RanksParticipated != len(agents) {
					t.Fatalf("generation %d: ranks_participated %d, want %d", gen, pr.RanksParticipated, len(agents))
				}
				return &pr
			}
		} else {
			last = err.Error()
		}
		for i, a := range agents {
			select {
			case <-a.done:
				t.Fatalf("agent %d exited (%v) while the group healed:\n%s", i, a.err, a.output())
			default:
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no answer from generation %d within 60s; last: %s\nleader's agent:\n%s", gen, last, agents[0].output())
	return nil
}

// comparePredictions checks that two world sizes gave the same argmax and
// top-k tokens, and logits equal up to float rounding.
func comparePredictions(t *testing.T, want, got *predictResp) {
	t.Helper()
	for i := range want.Outputs {
		w, g := want.Outputs[i], got.Outputs[i]
		if !slices.Equal(w.Argmax, g.Argmax) || w.NextToken != g.NextToken {
			t.Errorf("input %d: argmax %v with 1 rank, %v with %d", i, w.Argmax, g.Argmax, got.WorldSize)
		}
		wt, gt := tokensOf(w.TopK), tokensOf(g.TopK)
		if !slices.Equal(wt, gt) {
			t.Errorf("input %d: top-k %v with 1 rank, %v with %d", i, wt, gt, got.WorldSize)
			continue
		}
		for k := range w.TopK {
			if d := math.Abs(w.TopK[k].Logit - g.TopK[k].Logit); d > 1e-3 {
				t.Errorf("input %d: logit of token %d is %v with 1 rank, %v with %d", i, wt[k], w.TopK[k].Logit, g.TopK[k].Logit, got.WorldSize)
			}
		}
	}
}

func tokensOf(ks []topK) []int {
	out := make([]int, len(ks))
	for i, k := range ks {
		out[i] = k.Token
	}
	sort.Ints(out[1:]) // the argmax first; near-ties below it may swap
	return out
}
