package agent

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/muster-dev/muster/agent/preset"
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
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d entries in %s, want only the hostfile (no temporary file left)", len(entries), dir)
	}
	tests := []struct {
		name, dir, file, want string
	}{
		{"outside the directory", dir, "../escape", "not a name inside"},
		{"in a subdirectory", dir, "sub/file", "not a name inside"},
		{"absolute", dir, "/etc/passwd", "not a name inside"},
		{"no directory", "", "hostfile", "no directory for the runtime's files"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := writeFiles(tc.dir, map[string][]byte{tc.file: nil}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("writeFiles(%q, %q): %v; want an error containing %q", tc.dir, tc.file, err, tc.want)
			}
		})
	}
}

// Links planted in the directory, at a file's name or at the temporary
// name the agent used to write through (NAME.tmp), are never followed: the
// files they point at stay as they were.
func TestWriteFilesFollowsNoLink(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	for _, name := range []string{"ray.sh", "ray.sh.tmp"} {
		victim := filepath.Join(outside, name)
		if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(victim, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := writeFiles(dir, map[string][]byte{"ray.sh": []byte("echo ray\n")}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ray.sh", "ray.sh.tmp"} {
		if b, err := os.ReadFile(filepath.Join(outside, name)); err != nil || string(b) != "precious\n" {
			t.Errorf("%s, a link's target, now holds %q (%v): the write followed the link", name, b, err)
		}
	}
	fi, err := os.Lstat(filepath.Join(dir, "ray.sh"))
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("ray.sh is %v (%v), want a regular file in place of the link", fi.Mode(), err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "ray.sh")); string(b) != "echo ray\n" {
		t.Errorf("ray.sh = %q", b)
	}
}

// Without a Dir, a runtime with files gets a fresh directory only the agent
// can enter, never the old predictable path, even when someone planted a
// link there; the same directory for every generation.
func TestPrivateDir(t *testing.T) {
	base, outside := t.TempDir(), t.TempDir()
	t.Setenv("TMPDIR", base)
	old := filepath.Join(base, "muster", "ns", "g", "m-0")
	if err := os.MkdirAll(filepath.Dir(old), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, old); err != nil {
		t.Fatal(err)
	}
	ray, envPreset := mustPreset(t, "ray"), mustPreset(t, "env")
	c := &Config{Namespace: "ns", Group: "g", MemberID: "m-0", Runtime: "ray"}
	a := c.groupAssignment(ray)
	if a.Dir == "" || a.Dir == old || filepath.Dir(a.Dir) != base {
		t.Fatalf("Dir %q; want a new directory directly under %s, not %s", a.Dir, base, old)
	}
	fi, err := os.Lstat(a.Dir)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("%s: mode %v (%v); want a directory with mode 0700", a.Dir, fi.Mode(), err)
	}
	if err := writeFiles(a.Dir, map[string][]byte{"ray.sh": []byte("echo ray\n")}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("the planted link's target holds %d files; want none", len(entries))
	}
	if again := c.groupAssignment(ray); again.Dir != a.Dir {
		t.Errorf("second assignment's Dir %q, want the first one's %q", again.Dir, a.Dir)
	}

	// makeDir's remove deletes what it made, and never a Dir given.
	c2 := &Config{Group: "g", Runtime: "ray"}
	remove, err := c2.makeDir(ray)
	if err != nil {
		t.Fatal(err)
	}
	if c2.Dir == "" || c2.Dir == a.Dir {
		t.Fatalf("makeDir gave %q; want a directory of its own", c2.Dir)
	}
	remove()
	if _, err := os.Stat(c2.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after remove: %v", c2.Dir, err)
	}
	given := &Config{Dir: outside}
	remove, err = given.makeDir(preset.Preset{})
	if err != nil || given.Dir != outside {
		t.Fatalf("makeDir with Dir %s: Dir %q, %v", outside, given.Dir, err)
	}
	remove()
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("remove deleted the given Dir %s: %v", outside, err)
	}

	// A runtime that writes no files gets no directory.
	env := &Config{Group: "g", Runtime: "env"}
	if d := env.groupAssignment(envPreset).Dir; d != "" {
		t.Errorf("env runtime got Dir %q; want none made", d)
	}
	if remove, err := env.makeDir(envPreset); err != nil || env.Dir != "" {
		t.Errorf("makeDir for the env runtime: Dir %q, %v; want none made", env.Dir, err)
	} else {
		remove()
	}
	if entries, _ := os.ReadDir(base); len(entries) != 2 { // muster/ (the planted path) and a.Dir
		t.Errorf("%d entries in %s; want the planted path and the one directory made", len(entries), base)
	}
}

// mustPreset returns the preset called name.
func mustPreset(t *testing.T, name string) preset.Preset {
	t.Helper()
	p, err := preset.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
