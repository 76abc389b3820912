// Package e2etest holds what the end-to-end tests on the local control
// plane (e2e/kube, e2e/lws) share: this tree's agent and coordinator built
// once, Debian's torch, and reading pods: readiness, the rank an agent
// launched with, the model's answer.
package e2etest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

var (
	buildOnce sync.Once
	buildErr  error
)

// MusterBins builds bin/agent, bin/coordinator and bin/kubectl-muster from this tree into
// root/.local/e2e-bin (once per test process), so a test never runs a stale
// one, and returns that directory.
func MusterBins(t testing.TB, root string) string {
	t.Helper()
	// The binaries are built with cmd.Dir = root: a relative root would
	// put them relative to it twice.
	root, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, ".local", "e2e-bin")
	buildOnce.Do(func() {
		for _, c := range []string{"agent", "coordinator", "kubectl-muster"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, c), "./"+c+"/cmd/"+c)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", c, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return dir
}

// TorchPython is Debian's Python with torch; the test is skipped without it
// (it fails under CI, whose .ci/run installs it).
func TorchPython(t testing.TB) string {
	t.Helper()
	if err := exec.Command("/usr/bin/python3", "-c", "import torch.distributed").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("/usr/bin/python3 has no torch (%v); .ci/run must install python3-torch", err)
		}
		t.Skip("/usr/bin/python3 has no torch: apt-get install -y python3-torch")
	}
	return "/usr/bin/python3"
}

// PodReady is the pod's Ready condition.
func PodReady(p *v1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// Conditions lists the pod's conditions as Type=Status, for failure messages.
func Conditions(p *v1.Pod) string {
	var out []string
	for _, c := range p.Status.Conditions {
		out = append(out, string(c.Type)+"="+string(c.Status))
	}
	return strings.Join(out, ",")
}

// Tail is the last n lines of s, indented for a test log.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n      ")
}

var rankRE = regexp.MustCompile(`barrier released; launching runtime.* generation=(\d+) rank=(\d+) world_size=(\d+)`)

// LastRank reads the rank and generation the agent last launched with,
// from the log of the pod's container "model" (kubectl logs).
func LastRank(t testing.TB, cs kubernetes.Interface, ns, pod string) (gen, rank, world string) {
	t.Helper()
	gen, rank, world, err := RankFromLogs(cs, ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	return gen, rank, world
}

// RankFromLogs is LastRank for callers that poll: an error while the
// container has not started yet.
func RankFromLogs(cs kubernetes.Interface, ns, pod string) (gen, rank, world string, err error) {
	return RankFromContainerLogs(cs, ns, pod, "model")
}

// RankFromContainerLogs is RankFromLogs for a container of another name.
func RankFromContainerLogs(cs kubernetes.Interface, ns, pod, container string) (gen, rank, world string, err error) {
	logs, err := cs.CoreV1().Pods(ns).GetLogs(pod, &v1.PodLogOptions{Container: container}).DoRaw(context.Background())
	if err != nil {
		return "", "", "", fmt.Errorf("logs of %s: %w", pod, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if m := rankRE.FindStringSubmatch(sc.Text()); m != nil {
			gen, rank, world = m[1], m[2], m[3]
		}
	}
	return gen, rank, world, nil
}

// Prediction is e2e/model/tp_server.py's /v1/predict answer.
type Prediction struct {
	Outputs []struct {
		NextToken int `json:"next_token"`
	} `json:"outputs"`
	WorldSize int `json:"world_size"`
}

// Predict asks the model at addr (host:port) for a fixed prediction,
// retrying for up to a minute while the endpoint is not ready.
func Predict(t testing.TB, addr string) (Prediction, http.Header) {
	t.Helper()
	var p Prediction
	var hdr http.Header
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		p, hdr, last = TryPredict(addr)
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("no prediction from %s: %v (last: %v)", addr, err, last)
	}
	return p, hdr
}

// TryPredict asks the model at addr for the fixed prediction once.
func TryPredict(addr string) (Prediction, http.Header, error) {
	var p Prediction
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post("http://"+addr+"/v1/predict", "application/json", strings.NewReader(`{"inputs": [[1,2,3,4,5], [40, 41, 42]]}`))
	if err != nil {
		return p, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return p, nil, fmt.Errorf("%s: %s", resp.Status, Tail(string(b), 2))
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return p, nil, fmt.Errorf("answer %q: %w", Tail(string(b), 2), err)
	}
	return p, resp.Header, nil
}
