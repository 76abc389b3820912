package e2etest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// Probe asks addresses of the demo model for predictions in turn until
// stopped, counting answers by the generation that gave them
// (X-Muster-Generation) and failures.
type Probe struct {
	cancel context.CancelFunc
	done   chan struct{}
	ok     int
	failed []string
	gens   map[string]int
	// firstFail and lastFail bound the outage (zero without failures).
	firstFail, lastFail time.Time
}

// StartProbe starts a Probe; addrs (host:port) are asked round robin, one
// request every 100 ms.
func StartProbe(addrs []string) *Probe {
	return StartProbeFunc(func() []string { return addrs })
}

// StartProbeFunc is StartProbe for addresses that change (a Service's
// endpoints during a rollout): addrs is asked before each request; no
// address counts as a failure.
func StartProbeFunc(addrsOf func() []string) *Probe {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Probe{cancel: cancel, done: make(chan struct{}), gens: map[string]int{}}
	client := &http.Client{Timeout: 10 * time.Second}
	go func() {
		defer close(p.done)
		for i := 0; ctx.Err() == nil; i++ {
			addrs := addrsOf()
			if len(addrs) == 0 {
				addrs = []string{""}
			}
			addr := addrs[i%len(addrs)]
			failed := ""
			var resp *http.Response
			err := fmt.Errorf("no address to ask")
			if addr != "" {
				resp, err = client.Post("http://"+addr+"/v1/predict", "application/json", strings.NewReader(`{"inputs": [[1,2,3,4,5]]}`))
			}
			if err != nil {
				failed = fmt.Sprintf("%s: %v", addr, err)
			} else {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed = fmt.Sprintf("%s: %s", addr, resp.Status)
				} else {
					p.ok++
					p.gens[resp.Header.Get("X-Muster-Generation")]++
				}
			}
			if failed != "" && ctx.Err() == nil {
				p.failed = append(p.failed, failed)
				if p.firstFail.IsZero() {
					p.firstFail = time.Now()
				}
				p.lastFail = time.Now()
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return p
}

// Stop ends the probe and returns what it counted.
func (p *Probe) Stop() (ok int, failed []string, gens map[string]int) {
	p.cancel()
	<-p.done
	return p.ok, p.failed, p.gens
}

// Outage is the time from the first failed request to the last (after Stop).
func (p *Probe) Outage() time.Duration {
	if p.firstFail.IsZero() {
		return 0
	}
	return p.lastFail.Sub(p.firstFail)
}

// GangWatch follows a namespace's pods in the order the apiserver changed
// them and notes every pod bound to a node while fewer than size pods of
// its group (as groupOf names it) existed.
type GangWatch struct {
	mu  sync.Mutex
	bad []string
	err error
}

// WatchGang starts a GangWatch over ns; it stops with the test.
func WatchGang(t *testing.T, cs kubernetes.Interface, ns string, size int, groupOf func(*v1.Pod) string) *GangWatch {
	t.Helper()
	list, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	lw := &cache.ListWatch{WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		return cs.CoreV1().Pods(ns).Watch(ctx, o)
	}}
	rw, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, lw)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	g := &GangWatch{}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); rw.Stop(); <-done })
	go func() {
		defer close(done)
		pods := map[string]*v1.Pod{}
		for ev := range rw.ResultChan() {
			p, ok := ev.Object.(*v1.Pod)
			if !ok {
				if ev.Type == watch.Error {
					g.mu.Lock()
					g.err = fmt.Errorf("pod watch: %v", ev.Object)
					g.mu.Unlock()
				}
				continue
			}
			if ev.Type == watch.Deleted {
				delete(pods, p.Name)
				continue
			}
			prev := pods[p.Name]
			pods[p.Name] = p
			if p.Spec.NodeName == "" || (prev != nil && prev.UID == p.UID && prev.Spec.NodeName != "") {
				continue
			}
			members := 0
			for _, q := range pods {
				if groupOf(q) == groupOf(p) {
					members++
				}
			}
			if members < size {
				g.mu.Lock()
				g.bad = append(g.bad, fmt.Sprintf("%s bound to %s while its group %s had %d of %d pods", p.Name, p.Spec.NodeName, groupOf(p), members, size))
				g.mu.Unlock()
			}
		}
	}()
	return g
}

// Violations are the pods bound before their whole group existed.
func (g *GangWatch) Violations() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return append([]string{g.err.Error()}, g.bad...)
	}
	return append([]string(nil), g.bad...)
}
