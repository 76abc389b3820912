package deploy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/muster-dev/muster/coordinator/testcoord"
	"github.com/muster-dev/muster/e2e/cluster"
)

// coordinatorRunsChartArgs runs the coordinator built from this tree with
// the chart's arguments, changed only where a pod differs from this
// machine: loopback addresses for the pod's wildcard ones, the cluster's
// kubeconfig for --in-cluster, the cluster's etcd for $(ETCD_ENDPOINTS),
// and a directory holding the chart's webhook Secret for its mount. Then
// it asks what the chart's probes ask and calls the webhook as the
// apiserver would through the Service.
func coordinatorRunsChartArgs(t *testing.T, c *cluster.Cluster) {
	objs := render(t, nil)
	tlsDir := t.TempDir()
	secret := find(t, objs, "Secret", "muster-webhook-tls")
	for _, key := range []string{"tls.crt", "tls.key", "ca.crt"} {
		s, _, _ := unstructured.NestedString(secret.Object, "data", key)
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tlsDir, key), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	grpcAddr, webhookAddr, metricsAddr := testcoord.FreeAddr(t), testcoord.FreeAddr(t), testcoord.FreeAddr(t)
	replace := map[string]string{
		"--listen":          grpcAddr,
		"--webhook-listen":  webhookAddr,
		"--metrics-listen":  metricsAddr,
		"--webhook-tls-dir": tlsDir,
		"--data-dir":        t.TempDir(),
		"--etcd-endpoints":  c.EtcdURL(),
	}
	var args []string
	for _, a := range containerArgs(t, find(t, objs, "Deployment", "muster-coordinator")) {
		name, _, _ := strings.Cut(a, "=")
		switch v, ok := replace[name]; {
		case a == "--in-cluster":
			a = "--kubeconfig=" + c.Kubeconfig()
		case ok:
			a = name + "=" + v
		}
		args = append(args, a)
	}

	bin := filepath.Join(t.TempDir(), "coordinator")
	build := exec.Command("go", "build", "-o", bin, "./coordinator/cmd/coordinator")
	build.Dir = repoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the coordinator: %v\n%s", err, out)
	}
	var log bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("coordinator did not stop cleanly on SIGTERM: %v\n%s", err, log.String())
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Errorf("coordinator still running 20s after SIGTERM\n%s", log.String())
		}
	}()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format+"\n--- coordinator %s\n%s", append(args, strings.Join(cmd.Args[1:], " "), log.String())...)
	}

	// Readiness: the chart's grpc probe.
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err
			fail("coordinator exited: %v", err)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if time.Now().After(deadline) {
			fail("grpc health not SERVING after 30s: %v %v", resp, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Liveness and metrics: the chart's httpGet probe and scrape port.
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			fail("GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			fail("GET %s = %d, want 200", path, resp.StatusCode)
		}
	}
	// The webhook, as the apiserver calls it through the Service: TLS
	// verified against the configuration's caBundle for the Service's name.
	ca, err := os.ReadFile(filepath.Join(tlsDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	tconn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", webhookAddr, &tls.Config{RootCAs: roots, ServerName: "muster-coordinator.muster.svc"})
	if err != nil {
		fail("TLS to the webhook as the apiserver would: %v", err)
	}
	tconn.Close()
	// The chart owns the webhook configuration: the coordinator must not
	// have registered one of its own.
	if _, err := c.Clientset().AdmissionregistrationV1().MutatingWebhookConfigurations().Get(t.Context(), "muster", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		fail("MutatingWebhookConfiguration muster exists (err %v): the coordinator registered itself though the chart owns it", err)
	}
}
