package version

import (
	"strings"
	"testing"
)

func TestKubernetesRelease(t *testing.T) {
	for in, want := range map[string]string{"v0.37.2": "v1.37.2", "v0.34.4": "v1.34.4", "v1.2.3": "v1.2.3"} {
		if got := kubernetesRelease(in); got != want {
			t.Errorf("kubernetesRelease(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStringNamesEveryPart(t *testing.T) {
	i := Info{Version: "v0.3.0", Commit: "abc123", Go: "go1.26.8", Kubernetes: "v1.37.2"}
	got := i.String("coordinator")
	for _, want := range []string{"coordinator v0.3.0", "commit abc123", "go1.26.8", "Kubernetes v1.37.2"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	i.Kubernetes = ""
	if got := i.String("agent"); strings.Contains(got, "Kubernetes") {
		t.Errorf("%q names Kubernetes for a binary that links none", got)
	}
}

// A test binary has build info: Get reads its Go version.
func TestGetReadsTheGoVersion(t *testing.T) {
	if got := Get(); !strings.HasPrefix(got.Go, "go1.") {
		t.Fatalf("Get().Go = %q, want go1.x", got.Go)
	}
}
