package agent

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWarnServiceLinksNamesVariableServiceAndFix(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	warnServiceLinks(log, "vllm", []string{"VLLM_PORT=tcp://10.0.0.1:8000", "VLLM_HOST_IP=10.0.0.5", "HOME=/root"})
	out := buf.String()
	for _, want := range []string{"level=WARN", "VLLM_PORT=tcp://10.0.0.1:8000", `Service \"vllm\"`, "enableServiceLinks: false", "variable=VLLM_PORT", "service=vllm"} {
		if !strings.Contains(out, want) {
			t.Errorf("warning %q does not contain %q", out, want)
		}
	}
	if strings.Count(out, "\n") != 1 {
		t.Errorf("want exactly one warning (VLLM_HOST_IP is no service link), got:\n%s", out)
	}
	buf.Reset()
	warnServiceLinks(log, "torchrun", []string{"VLLM_PORT=tcp://10.0.0.1:8000"})
	if buf.Len() != 0 {
		t.Errorf("torchrun does not read VLLM_*, but got: %s", buf.String())
	}
}

func TestWriteFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "member")
	if err := writeFiles(dir, map[string][]byte{"hostfile": []byte("10.0.0.1 slots=8\n")}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "hostfile")); err != nil || string(b) != "10.0.0.1 slots=8\n" {
		t.Fatalf("hostfile = %q, %v", b, err)
	}
	if err := writeFiles(dir, map[string][]byte{"../escape": nil}); err == nil || !strings.Contains(err.Error(), "not a name inside") {
		t.Fatalf("a name outside the directory was written: %v", err)
	}
}
