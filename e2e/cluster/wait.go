package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// waitFor polls check until it reports done, the context ends or a
// component dies, logging progress every 5 seconds so that a slow start
// shows what it waits for.
func (c *Cluster) waitFor(ctx context.Context, what string, check func(context.Context) (done bool, status string, err error)) error {
	began := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	lastReport := began
	status := ""
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		done, st, err := check(cctx)
		cancel()
		if err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		if done {
			c.log.Info(what+": ok", "took", time.Since(began).Round(10*time.Millisecond))
			return nil
		}
		status = st
		if time.Since(lastReport) >= 5*time.Second {
			lastReport = time.Now()
			c.log.Info("waiting for "+what, "elapsed", time.Since(began).Round(time.Second), "status", status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last status: %s)", what, ctx.Err(), status)
		case <-c.failed:
			return fmt.Errorf("wait for %s: %w", what, c.failErr)
		case <-tick.C:
		}
	}
}

// waitUntilReady waits for the rest of what Start promises once every
// component runs: kcm healthy, the scheduler ready, the default
// ServiceAccount there, and every node Ready and untainted.
func (c *Cluster) waitUntilReady(ctx context.Context) error {
	health := c.healthClient()
	if err := c.waitFor(ctx, "kube-controller-manager /healthz", func(ctx context.Context) (bool, string, error) {
		return httpOK(ctx, health, c.ports.kcm, "/healthz")
	}); err != nil {
		return err
	}
	if c.cfg.Binaries.Scheduler != "" {
		if err := c.waitFor(ctx, "scheduler /readyz", func(ctx context.Context) (bool, string, error) {
			return httpOK(ctx, health, c.ports.scheduler, "/readyz")
		}); err != nil {
			return err
		}
	}
	// kcm's serviceaccount controller creates it; until then the
	// ServiceAccount admission plugin refuses every pod in "default".
	if err := c.waitFor(ctx, "default ServiceAccount", func(ctx context.Context) (bool, string, error) {
		_, err := c.clientset.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		return true, "", nil
	}); err != nil {
		return err
	}
	if c.nodes != nil {
		if err := c.waitFor(ctx, "nodes Ready and untainted", c.nodesReady); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) apiserverReady(ctx context.Context) (bool, string, error) {
	body, err := c.clientset.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		msg := err.Error()
		if len(body) > 0 {
			msg = lastLines(string(body), 3)
		}
		return false, msg, nil
	}
	return true, "", nil
}

func (c *Cluster) nodesReady(ctx context.Context) (bool, string, error) {
	list, err := c.clientset.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, err.Error(), nil
	}
	want := c.nodes.NodeNames()
	ready := map[string]bool{}
	for i := range list.Items {
		ready[list.Items[i].Name] = nodeReady(&list.Items[i])
	}
	n := 0
	var notReady []string
	for _, name := range want {
		if ready[name] {
			n++
		} else if len(notReady) < 3 {
			notReady = append(notReady, name)
		}
	}
	return n == len(want), fmt.Sprintf("%d/%d ready (not yet: %s)", n, len(want), strings.Join(notReady, ", ")), nil
}

// healthClient reaches kcm's and the scheduler's health endpoints, whose
// serving cert the cluster CA signed; those paths need no credentials.
func (c *Cluster) healthClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.certs.ca.PEM)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func httpOK(ctx context.Context, client *http.Client, port int, path string) (bool, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://127.0.0.1:"+strconv.Itoa(port)+path, nil)
	if err != nil {
		return false, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, err.Error(), nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, resp.Status, nil
	}
	return true, "", nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	var failing []string
	for _, l := range lines {
		if strings.Contains(l, "failed") {
			failing = append(failing, strings.TrimSpace(l))
		}
	}
	if len(failing) > 0 {
		lines = failing
	}
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "; ")
}
