// Package kube holds end-to-end tests of muster on the local control plane
// with process nodes: pods that really run, injected by the coordinator's
// webhook, gang-scheduled by muster's scheduler, ranked by the coordinator
// and served behind one endpoint by their agents.
package kube

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/e2e/e2etest"
	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/test/clustertest"
	"github.com/muster-dev/muster/test/podbuilder"
)

func TestMain(m *testing.M) { clustertest.Main(m) }

// startCluster starts a private control plane with process nodes and the
// coordinator (webhook registered).
func startCluster(t *testing.T) (*cluster.Cluster, string) {
	t.Helper()
	root, err := clustertest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	c := e2etest.ProcessCluster(t, root)
	return c, root
}

// waitGroupReady waits until n pods of the app are Ready and returns them
// by name.
func waitGroupReady(t *testing.T, cs kubernetes.Interface, ns string, n int, timeout time.Duration, extra func([]v1.Pod) bool) map[string]v1.Pod {
	t.Helper()
	var pods []v1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=tp-model"})
		if err != nil {
			return false, nil
		}
		pods = list.Items
		ready := 0
		for _, p := range pods {
			if p.DeletionTimestamp == nil && e2etest.PodReady(&p) {
				ready++
			}
		}
		return ready == n && len(pods) == n && (extra == nil || extra(pods)), nil
	})
	if err != nil {
		var b strings.Builder
		for _, p := range pods {
			fmt.Fprintf(&b, "\n  %s node=%q ip=%s phase=%s conditions=%v", p.Name, p.Spec.NodeName, p.Status.PodIP, p.Status.Phase, e2etest.Conditions(&p))
			logs, _ := cs.CoreV1().Pods(ns).GetLogs(p.Name, &v1.PodLogOptions{Container: "model"}).DoRaw(context.Background())
			fmt.Fprintf(&b, "\n    log tail: %s", e2etest.Tail(string(logs), 6))
		}
		t.Fatalf("group not Ready within %s:%s", timeout, b.String())
	}
	out := map[string]v1.Pod{}
	for _, p := range pods {
		out[p.Name] = p
	}
	return out
}

// TestGroupsOnKubernetes runs every workload kind on one private cluster
// (process nodes, coordinator, webhook, muster's scheduler).
func TestGroupsOnKubernetes(t *testing.T) {
	e2etest.TorchPython(t)
	c, root := startCluster(t)
	t.Run("StatefulSetServedBehindOneEndpoint", func(t *testing.T) { statefulSetGroup(t, c, root) })
	t.Run("PlainPods", func(t *testing.T) { plainPodsGroup(t, c) })
	t.Run("IndexedJobCompletes", func(t *testing.T) { indexedJobGroup(t, c, root) })
	t.Run("RanksFollowPlacementAndRestartKeepsNodes", func(t *testing.T) { ranksFollowPlacement(t, c) })
	t.Run("UpstreamPodGroupIsAMusterGroup", func(t *testing.T) { upstreamPodGroup(t, c) })
}

func statefulSetGroup(t *testing.T, c *cluster.Cluster, root string) {
	cs := c.Clientset()
	ns := clustertest.Namespace(t, c)
	checkInvalidAnnotationDenied(t, cs, ns)
	start := time.Now()
	if kinds := e2etest.CreateExample(t, c, ns, root, "tp-model.yaml"); strings.Join(kinds, ",") != "Service,StatefulSet" {
		t.Fatalf("tp-model.yaml: kinds %v, want a Service and a StatefulSet", kinds)
	}
	pods := waitGroupReady(t, cs, ns, 4, 3*time.Minute, nil)
	t.Logf("4 pods injected, gang-scheduled and Ready in %s", time.Since(start).Round(time.Millisecond))

	for name, p := range pods {
		if p.Spec.SchedulerName != "muster-scheduler" || len(p.Spec.InitContainers) == 0 || p.Spec.Containers[0].Command[0] != "/muster/bin/agent" {
			t.Errorf("%s was not injected: scheduler %q, init %d, command %v", name, p.Spec.SchedulerName, len(p.Spec.InitContainers), p.Spec.Containers[0].Command)
		}
		gen, rank, world := e2etest.LastRank(t, cs, ns, name)
		if want := strings.TrimPrefix(name, "tp-model-"); rank != want || world != "4" || gen != "0" {
			t.Errorf("%s: rank %s of %s in generation %s, want rank %s of 4 in generation 0 (ranks follow pod ordinals)", name, rank, world, gen, want)
		}
	}

	// The Service's EndpointSlices list the group's pods (Ready only
	// together); every address there answers, with the same answer (one
	// model), and streams.
	addrs := sliceAddrs(t, cs, ns, "tp-model", 4)
	var first *e2etest.Prediction
	for _, addr := range addrs {
		got, hdr := e2etest.Predict(t, addr)
		if got.WorldSize != 4 || len(got.Outputs) != 2 {
			t.Fatalf("%s: prediction %+v", addr, got)
		}
		if hdr.Get("X-Muster-Generation") != "0" {
			t.Errorf("%s: generation header %q", addr, hdr.Get("X-Muster-Generation"))
		}
		if first == nil {
			first = &got
		} else if got.Outputs[0].NextToken != first.Outputs[0].NextToken || got.Outputs[1].NextToken != first.Outputs[1].NextToken {
			t.Errorf("%s answered %+v, another address %+v", addr, got, *first)
		}
		resp, body, rerr := stream(t, addr)
		if rerr != nil {
			// Seen twice in ~10 CI runs, never locally: the stream through a
			// worker is cut right after the headers (unexpected EOF). Logged
			// and retried once while the cause is found; a second failure
			// fails the test.
			t.Logf("stream at %s cut short (%v); retrying once", addr, rerr)
			resp, body, rerr = stream(t, addr)
		}
		if resp.StatusCode != 200 || strings.Count(string(body), "data: ") != 9 || !strings.Contains(string(body), "[DONE]") {
			leaderLog, _ := cs.CoreV1().Pods(ns).GetLogs("tp-model-0", &v1.PodLogOptions{Container: "model"}).DoRaw(context.Background())
			t.Fatalf("stream at %s: %d %q (read error %v, headers %v)\nleader log:\n      %s",
				addr, resp.StatusCode, body, rerr, resp.Header, e2etest.Tail(string(leaderLog), 12))
		}
	}

	// The leader pod dies: the group re-forms in place (generation 1, same
	// ranks) and answers again at every pod.
	leaderIP := pods["tp-model-0"].Status.PodIP
	healStart := time.Now()
	if err := cs.CoreV1().Pods(ns).Delete(context.Background(), "tp-model-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	pods = waitGroupReady(t, cs, ns, 4, 3*time.Minute, func(ps []v1.Pod) bool {
		for _, p := range ps {
			if p.Name == "tp-model-0" && p.Status.PodIP == leaderIP {
				return false // still the old leader
			}
		}
		return true
	})
	for _, addr := range sliceAddrs(t, cs, ns, "tp-model", 4, pods) {
		got, hdr := e2etest.Predict(t, addr)
		if got.Outputs[0].NextToken != first.Outputs[0].NextToken {
			t.Errorf("%s after healing answered %+v, before %+v", addr, got, *first)
		}
		if g := hdr.Get("X-Muster-Generation"); g == "0" {
			t.Errorf("%s still serves generation 0 after the leader was replaced", addr)
		}
	}
	for name := range pods {
		_, rank, _ := e2etest.LastRank(t, cs, ns, name)
		if want := strings.TrimPrefix(name, "tp-model-"); rank != want {
			t.Errorf("%s: rank %s after healing, want %s", name, rank, want)
		}
	}
	t.Logf("leader pod deleted: group re-formed and answering at every pod in %s", time.Since(healStart).Round(time.Millisecond))
	// Free the nodes' GPUs for the next subtest.
	if err := cs.AppsV1().StatefulSets(ns).Delete(context.Background(), "tp-model", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, cs, ns, "app=tp-model")
}

func waitGone(t *testing.T, cs kubernetes.Interface, ns, selector string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		return err == nil && len(list.Items) == 0, nil
	})
	if err != nil {
		t.Fatalf("pods %s still present: %v", selector, err)
	}
}

// plainPodsGroup: three bare pods (no controller) with the two annotations
// form a group; a small HTTP runtime on the leader answers at every pod's
// endpoint, and pods are Ready only together.
func plainPodsGroup(t *testing.T, c *cluster.Cluster) {
	cs := c.Clientset()
	ns := clustertest.Namespace(t, c)
	server := `import http.server, os
if os.environ["RANK"] != "0":
    import time; time.sleep(3600)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = ("rank 0 of %s" % os.environ["WORLD_SIZE"]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
http.server.HTTPServer((os.environ["MUSTER_ADDRESS"], 9000), H).serve_forever()`
	for i := 0; i < 3; i++ {
		pod := podbuilder.MakePod().Namespace(ns).Name(fmt.Sprintf("web-%d", i)).Group("web").Label("app", "web").
			Inject().Size(3).Port(9000).Container("web", "python:3.11-slim").Command("python3", "-c", server).Obj()
		if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var pods []v1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, nil
		}
		pods = list.Items
		ready := 0
		for i := range pods {
			if e2etest.PodReady(&pods[i]) {
				ready++
			}
		}
		return ready == 3, nil
	})
	if err != nil {
		t.Fatalf("plain pods group not Ready: %v", err)
	}
	for _, p := range pods {
		resp, err := http.Get("http://" + p.Status.PodIP + ":8080/")
		if err != nil {
			t.Fatalf("%s endpoint: %v", p.Name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "rank 0 of 3" {
			t.Errorf("%s endpoint: %d %q", p.Name, resp.StatusCode, b)
		}
	}
}

// indexedJobGroup: an indexed Job of 2 runs the real torch all_reduce as one
// group, ranked by completion index, and completes when both ranks exit 0.
func indexedJobGroup(t *testing.T, c *cluster.Cluster, root string) {
	cs := c.Clientset()
	ns := clustertest.Namespace(t, c)
	two := int32(2)
	mode := batchv1.IndexedCompletion
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "reduce", Namespace: ns},
		Spec: batchv1.JobSpec{
			Completions: &two, Parallelism: &two, CompletionMode: &mode,
			Template: v1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      map[string]string{"muster.dev/group": "reduce"},
					Annotations: map[string]string{"muster.dev/inject": "true", "muster.dev/size": "2"},
				},
				Spec: v1.PodSpec{
					RestartPolicy: v1.RestartPolicyNever,
					Containers: []v1.Container{{Name: "reduce", Image: "python:3.11-slim",
						Command: []string{"/usr/bin/python3", filepath.Join(root, "e2e", "testdata", "allreduce.py")}}},
				},
			},
		},
	}
	start := time.Now()
	if _, err := cs.BatchV1().Jobs(ns).Create(context.Background(), job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		j, err := cs.BatchV1().Jobs(ns).Get(ctx, "reduce", metav1.GetOptions{})
		return err == nil && j.Status.Succeeded == 2, nil
	})
	if err != nil {
		dumpLogs(t, c, ns, "muster.dev/group=reduce")
		t.Fatalf("indexed Job did not complete: %v", err)
	}
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "muster.dev/group=reduce"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		idx := p.Annotations["batch.kubernetes.io/job-completion-index"]
		logs, err := cs.CoreV1().Pods(ns).GetLogs(p.Name, &v1.PodLogOptions{}).DoRaw(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("rank %s/2 generation 0: all_reduce ok, sum 3", idx); !strings.Contains(string(logs), want) {
			t.Errorf("%s (index %s): no %q in its log:\n%s", p.Name, idx, want, e2etest.Tail(string(logs), 8))
		}
	}
	t.Logf("indexed Job of 2 ran all_reduce as one group and completed in %s", time.Since(start).Round(time.Millisecond))
}

// stream asks addr for a streamed completion and reads it whole.
func stream(t *testing.T, addr string) (*http.Response, []byte, error) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/v1/completions", "application/json", strings.NewReader(`{"prompt": "hello", "max_tokens": 8, "stream": true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// sliceAddrs waits until the Service's EndpointSlices list n ready
// endpoints and returns them as host:port, as kube-proxy would see them.
func sliceAddrs(t *testing.T, cs kubernetes.Interface, ns, svc string, n int, pods ...map[string]v1.Pod) []string {
	t.Helper()
	var addrs []string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + svc})
		if err != nil {
			return false, nil
		}
		addrs = addrs[:0]
		for _, sl := range list.Items {
			if len(sl.Ports) == 0 || sl.Ports[0].Port == nil {
				continue
			}
			for _, ep := range sl.Endpoints {
				if len(pods) > 0 && !hasIP(pods[0], ep.Addresses) {
					continue // a pod that is gone; the slice catches up
				}
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready && len(ep.Addresses) > 0 {
					addrs = append(addrs, fmt.Sprintf("%s:%d", ep.Addresses[0], *sl.Ports[0].Port))
				}
			}
		}
		return len(addrs) == n, nil
	})
	if err != nil {
		t.Fatalf("Service %s: %d ready endpoints in its EndpointSlices (%v), want %d", svc, len(addrs), addrs, n)
	}
	return append([]string(nil), addrs...)
}

func hasIP(pods map[string]v1.Pod, addrs []string) bool {
	for _, p := range pods {
		for _, a := range addrs {
			if p.Status.PodIP == a {
				return true
			}
		}
	}
	return false
}

// checkInvalidAnnotationDenied: a pod with a bad muster annotation is
// refused at admission, with the annotation and the value named.
func checkInvalidAnnotationDenied(t *testing.T, cs kubernetes.Interface, ns string) {
	t.Helper()
	pod := podbuilder.MakePod().Namespace(ns).Name("bad").Group("g").Inject().Annotation(podapi.AnnotationSize, "two").
		Container("c", "x").Command("true").Obj()
	_, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "muster.dev/size") || !strings.Contains(err.Error(), `"two"`) {
		t.Fatalf("pod with muster.dev/size=two: %v, want a denial naming the annotation and value", err)
	}
}
