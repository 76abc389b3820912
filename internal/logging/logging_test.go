package logging

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"strings"
	"testing"
)

func parse(t *testing.T, args ...string) Flags {
	t.Helper()
	var f Flags
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.Register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestJSONIsOneObjectPerLine(t *testing.T) {
	var buf bytes.Buffer
	log, err := parse(t, "--log-format", "json").New(&buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("group ready", "group", "default/g", "generation", 2)
	log.Debug("not shown at info")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("want 1 line, got %q", buf.String())
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatalf("%q is not JSON: %v", lines[0], err)
	}
	if rec["msg"] != "group ready" || rec["group"] != "default/g" || rec["generation"] != float64(2) || rec["level"] != "INFO" {
		t.Fatalf("record %v", rec)
	}
}

func TestTextByDefaultAndLevels(t *testing.T) {
	var buf bytes.Buffer
	log, err := parse(t, "--log-level", "debug").New(&buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("shown", "k", "v")
	if !strings.Contains(buf.String(), "level=DEBUG msg=shown k=v") {
		t.Fatalf("text output %q", buf.String())
	}
}

func TestBadValuesNameTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--log-format", "xml"}, `--log-format "xml": want text or json`},
		{[]string{"--log-level", "loud"}, `--log-level "loud": want debug, info, warn or error`},
	} {
		_, err := parse(t, tc.args...).New(io.Discard)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%v: err %v, want %q", tc.args, err, tc.want)
		}
	}
}
