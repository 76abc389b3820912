package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Every binary says what build it is: muster's version, the commit, Go's
// version and, for the binaries that link Kubernetes, Kubernetes'.
func TestEveryBinaryAnswersVersion(t *testing.T) {
	want := map[string]*regexp.Regexp{
		"agent":          regexp.MustCompile(`^agent \S+ \(commit \S+, go1\.\S+(, Kubernetes v1\.\d+\.\d+)?\)\n$`),
		"coordinator":    regexp.MustCompile(`^coordinator \S+ \(commit \S+, go1\.\S+, Kubernetes v1\.\d+\.\d+\)\n$`),
		"scheduler":      regexp.MustCompile(`^scheduler \S+ \(commit \S+, go1\.\S+, Kubernetes v1\.37\.\d+\)\n$`),
		"kubectl-muster": regexp.MustCompile(`^kubectl-muster \S+ \(commit \S+, go1\.\S+, Kubernetes v1\.37\.\d+\)\n$`),
	}
	for name, re := range want {
		bin := filepath.Join(bins(t), name)
		if _, err := os.Stat(bin); err != nil && (name == "scheduler" || name == "kubectl-muster") {
			t.Logf("no %s (make build makes it): skipped", bin)
			continue
		}
		out, err := exec.Command(bin, "--version").Output()
		if err != nil || !re.Match(out) {
			t.Errorf("%s --version: %v, stdout %q, want %s", name, err, out, re)
		}
	}
}

// --log-format json makes every line the coordinator and the agent log one
// JSON object, with the message and its fields as keys.
func TestLogFormatJSON(t *testing.T) {
	coord, cp := coordinatorProc(t, "127.0.0.1", "--log-format", "json")
	cp.waitOutput(t, `"msg":"coordinator serving"`, 10*time.Second)
	ps := runGroup(t, coord, "json-logs", 1, []string{"--log-format", "json"}, "true")
	if code := ps[0].wait(t, 60*time.Second); code != 0 {
		t.Fatalf("agent exited %d\n%s", code, ps[0].output())
	}
	for name, out := range map[string]string{"coordinator": cp.output(), "agent": ps[0].output()} {
		lines := strings.Split(strings.TrimSpace(out), "\n")
		msgs := map[string]bool{}
		for _, l := range lines {
			var rec map[string]any
			if err := json.Unmarshal([]byte(l), &rec); err != nil {
				t.Fatalf("%s logged a line that is not JSON: %q (%v)", name, l, err)
			}
			if _, ok := rec["time"]; !ok || rec["level"] == nil {
				t.Fatalf("%s: record without time or level: %q", name, l)
			}
			msgs[rec["msg"].(string)] = true
		}
		if len(msgs) < 2 {
			t.Fatalf("%s logged %d distinct messages, want several:\n%s", name, len(msgs), out)
		}
	}
	if code := exec.Command(filepath.Join(bins(t), "agent"), "run", "--log-format", "xml", "--", "true").Run(); code == nil {
		t.Fatal("agent run --log-format xml exited 0, want a usage error")
	}
}
