// Package clustertest gives tests a local control plane (package
// e2e/cluster): one shared by all tests of a test binary, or a private one.
//
//	func TestMain(m *testing.M) { clustertest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		c := clustertest.Shared(t)
//		ns := clustertest.Namespace(t, c)
//		...
//	}
//
// The binaries come from $MUSTER_BIN, else <repo>/bin; `make kube-bins`
// brings them up to date first (seconds when nothing changed), so a test
// never runs a stale bin/scheduler. If they cannot be built the test fails
// and says why: nothing is skipped.
package clustertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/muster-dev/muster/e2e/cluster"
)

var (
	underMain bool

	binOnce sync.Once
	binDir  string
	binErr  error

	sharedOnce sync.Once
	shared     *cluster.Cluster
	sharedDir  string
	sharedErr  error
)

// Main runs the tests, then stops the shared cluster if a test started
// one. Its directory (logs included) is removed when every test passed and
// kept, with its path printed, when one failed.
func Main(m *testing.M) {
	underMain = true
	code := m.Run()
	if shared != nil {
		if err := shared.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "clustertest: stop shared cluster:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	if sharedDir != "" {
		if code == 0 {
			os.RemoveAll(sharedDir)
		} else {
			fmt.Fprintln(os.Stderr, "clustertest: cluster logs kept in", filepath.Join(sharedDir, "logs"))
		}
	}
	os.Exit(code)
}

// Shared returns the test binary's cluster (DefaultConfig: 4 kwok nodes of
// 8 GPUs in two racks), starting it on first use. The package's TestMain
// must call Main, which stops it. Tests share it, so each should work in
// its own namespace (see Namespace) and leave the nodes as they found them.
func Shared(t testing.TB) *cluster.Cluster {
	t.Helper()
	skipShort(t)
	if !underMain {
		t.Fatal("clustertest.Shared needs the package's TestMain to be: func TestMain(m *testing.M) { clustertest.Main(m) }")
	}
	sharedOnce.Do(func() {
		bins, err := bins()
		if err != nil {
			sharedErr = err
			return
		}
		sharedDir, err = os.MkdirTemp("", "muster-cluster-")
		if err != nil {
			sharedErr = err
			return
		}
		cfg := config(bins, sharedDir)
		shared, sharedErr = cluster.Start(context.Background(), cfg)
	})
	if sharedErr != nil {
		t.Fatalf("shared cluster: %v", sharedErr)
	}
	if err := shared.Err(); err != nil {
		t.Fatalf("shared cluster is broken: %v", err)
	}
	return shared
}

// New starts a cluster for this test alone, in a fresh directory, and stops
// it when the test ends. configure (may be nil) adjusts DefaultConfig.
func New(t testing.TB, configure func(*cluster.Config)) *cluster.Cluster {
	t.Helper()
	skipShort(t)
	bins, err := bins()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := config(bins, dir)
	if configure != nil {
		configure(&cfg)
	}
	c, err := cluster.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c
}

func config(bins, dir string) cluster.Config {
	cfg := cluster.DefaultConfig(dir, bins)
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("cluster", filepath.Base(dir))
	if root, err := RepoRoot(); err == nil {
		cfg.SchedulerConfig = filepath.Join(root, "deploy", "scheduler", "config.yaml")
		cfg.CRDs, _ = filepath.Glob(filepath.Join(root, "deploy", "crds", "*.yaml"))
	}
	return cfg
}

// Namespace creates a namespace named after the test and deletes it when
// the test ends (without waiting: kwok pods go at once, kcm does the rest).
func Namespace(t testing.TB, c *cluster.Cluster) string {
	t.Helper()
	// A DNS label: lower case, digits and '-', at most 63 characters with
	// the 5 that GenerateName appends.
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		}
		return '-'
	}, t.Name())
	if len(name) > 40 {
		name = name[:40]
	}
	name = strings.Trim(name, "-")
	if name == "" {
		name = "test"
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: name + "-"}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	created, err := c.Clientset().CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace for %s: %v", t.Name(), err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Clientset().CoreV1().Namespaces().Delete(ctx, created.Name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete namespace %s: %v", created.Name, err)
		}
	})
	return created.Name
}

// Bins returns the directory with up-to-date control-plane binaries,
// building them on first use in this process.
func Bins(t testing.TB) string {
	t.Helper()
	dir, err := bins()
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// kubeBins are what `make kube-bins` builds and the cluster runs.
var kubeBins = []string{"kube-apiserver", "kube-controller-manager", "kubectl", "scheduler", "kwok"}

func bins() (string, error) {
	binOnce.Do(func() { binDir, binErr = buildBins() })
	return binDir, binErr
}

func buildBins() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("clustertest: %w", err)
	}
	dir := os.Getenv("MUSTER_BIN")
	if dir == "" {
		dir = filepath.Join(root, "bin")
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("clustertest: bin dir: %w", err)
	}
	// go test ./... runs packages in parallel; one build at a time.
	lock, err := os.OpenFile(filepath.Join(dir, ".kube-bins.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("clustertest: lock bin dir: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("clustertest: lock bin dir: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	began := time.Now()
	cmd := exec.Command("make", "-s", "-C", root, "kube-bins", "BIN="+dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("clustertest: build the control-plane binaries (make kube-bins BIN=%s): %w\n%s", dir, err, out.String())
	}
	var missing []string
	for _, b := range kubeBins {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("clustertest: make kube-bins left %s missing in %s", strings.Join(missing, ", "), dir)
	}
	if d := time.Since(began); d > 5*time.Second {
		fmt.Fprintf(os.Stderr, "clustertest: make kube-bins took %s\n", d.Round(time.Second))
	}
	return dir, nil
}

// RepoRoot is the muster module's root: the nearest directory at or above
// the working directory (a test's package directory) with muster's go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(data), []byte("module github.com/muster-dev/muster\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no muster go.mod at or above the working directory")
		}
		dir = parent
	}
}

// skipShort skips a test that needs a control plane under go test -short
// (make test-unit): starting one takes seconds, and building its binaries
// cold takes minutes.
func skipShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a local control plane (kube-apiserver, etcd); skipped with -short")
	}
}
