package procnode_test

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/e2e/procnode"
	"github.com/muster-dev/muster/test/clustertest"
	"github.com/muster-dev/muster/test/podbuilder"
)

// TestProcessNodes runs real pods on process nodes of one private cluster:
// each subtest in its own namespace.
func TestProcessNodes(t *testing.T) {
	root, err := clustertest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(t.TempDir(), "agent")
	build := exec.Command("go", "build", "-o", agent, "./agent/cmd/agent")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the agent: %v\n%s", err, out)
	}

	cfg := procnode.DefaultConfig(clustertest.Bins(t))
	cfg.AgentBin = agent
	nodes := procnode.New(cfg)
	began := time.Now()
	c := clustertest.New(t, func(cc *cluster.Config) { cc.Nodes = nodes })
	t.Logf("cluster with %d process nodes up in %s", len(c.Nodes()), time.Since(began).Round(100*time.Millisecond))

	t.Run("NodesReady", func(t *testing.T) { testNodes(t, c) })
	t.Run("EnvAndLogs", func(t *testing.T) { testEnvAndLogs(t, c) })
	t.Run("InitContainersAndPaths", func(t *testing.T) { testInit(t, c) })
	t.Run("Volumes", func(t *testing.T) { testVolumes(t, c) })
	t.Run("ServiceAccountToken", func(t *testing.T) { testToken(t, c, nodes) })
	t.Run("ReadinessProbeAndGate", func(t *testing.T) { testReadiness(t, c) })
	t.Run("RestartPolicy", func(t *testing.T) { testRestart(t, c) })
	t.Run("AgentImage", func(t *testing.T) { testAgent(t, c) })
	t.Run("DeleteEndsProcessTree", func(t *testing.T) { testDelete(t, c, nodes) })

	// Stop leaves no process of any pod behind. (A namespace of its own
	// without clustertest's cleanup, which would need the cluster.)
	nsObj, err := c.Clientset().CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "stop"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns := nsObj.Name
	var pids []int
	for i := range 2 {
		pod := shPod(fmt.Sprintf("left-%d", i), "sleep 300 & sleep 300; wait")
		create(t, c, ns, pod)
		waitPod(t, c, ns, pod.Name, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		pids = append(pids, podProcesses(t, nodes.PodDir(ns, pod.Name))...)
	}
	if len(pids) < 4 {
		t.Fatalf("pods run processes %v, want at least 4", pids)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	for _, pid := range pids {
		if running(pid) {
			t.Errorf("pid %d of a pod still running after Stop", pid)
		}
	}
}

func testNodes(t *testing.T, c *cluster.Cluster) {
	list, err := c.Clientset().CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 4 {
		t.Fatalf("%d nodes, want 4", len(list.Items))
	}
	for _, n := range list.Items {
		if q := n.Status.Allocatable[cluster.GPUResource]; q.Value() != 8 {
			t.Errorf("%s: %s GPUs", n.Name, q.String())
		}
		if n.Status.DaemonEndpoints.KubeletEndpoint.Port == 0 {
			t.Errorf("%s: no kubelet port", n.Name)
		}
		if len(n.Status.Addresses) == 0 || n.Status.Addresses[0].Address != "127.0.0.1" {
			t.Errorf("%s: addresses %v", n.Name, n.Status.Addresses)
		}
	}
	if _, err := c.Clientset().CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(t.Context(), list.Items[0].Name, metav1.GetOptions{}); err != nil {
		t.Errorf("node lease: %v", err)
	}
}

// testEnvAndLogs: downward-API env, $(VAR) expansion in args and env, the
// pod's own loopback IP, and its log through the apiserver (kubectl logs).
func testEnvAndLogs(t *testing.T, c *cluster.Cluster) {
	ns := clustertest.Namespace(t, c)
	cs := c.Clientset()
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(t.Context(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "cfg"}, Data: map[string]string{"greeting": "hi", "FROM_ENVFROM": "yes"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := shPod("hello", `echo hello $(POD_NAME) $MY_IP; echo "ns=$NS node=$NODE cpu=$CPU g=$GREETING e=$CFG_FROM_ENVFROM combo=$COMBO host=$HOST_IP"; echo to-stderr >&2; sleep 300`)
	pod.Labels = map[string]string{"app": "hello"}
	ctr := &pod.Spec.Containers[0]
	ctr.Env = []corev1.EnvVar{
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "MY_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: "HOST_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
		{Name: "NS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		{Name: "CPU", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}},
		{Name: "GREETING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "greeting"}}},
		{Name: "COMBO", Value: "$(POD_NAME)@$(MY_IP)"},
	}
	ctr.EnvFrom = []corev1.EnvFromSource{{Prefix: "CFG_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}}
	create(t, c, ns, pod)
	got := waitPod(t, c, ns, pod.Name, "Running and Ready", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning && podReady(p) })
	ip, err := netip.ParseAddr(got.Status.PodIP)
	if err != nil || !netip.MustParsePrefix("127.10.0.0/16").Contains(ip) {
		t.Fatalf("pod IP %q, want one in 127.10.0.0/16", got.Status.PodIP)
	}
	if got.Status.HostIP != "127.0.0.1" {
		t.Errorf("host IP %q", got.Status.HostIP)
	}
	want := []string{
		"hello hello " + got.Status.PodIP,
		fmt.Sprintf("ns=%s node=%s cpu=64 g=hi e=yes combo=hello@%s host=127.0.0.1", ns, got.Spec.NodeName, got.Status.PodIP),
		"to-stderr",
	}
	var logs string
	waitFor(t, "logs", 30*time.Second, func(ctx context.Context) (bool, string) {
		b, err := cs.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			return false, err.Error()
		}
		logs = string(b)
		return strings.Count(logs, "\n") >= len(want), logs
	})
	// stdout and stderr are two pipes: their relative order is not kept
	// (neither is it by a container runtime).
	lines := strings.Split(strings.TrimSuffix(logs, "\n"), "\n")
	if !sameSet(lines, want) {
		t.Errorf("logs:\n%s\nwant these lines in any order:\n%s", logs, strings.Join(want, "\n"))
	}
	// tail, timestamps and follow go through the kubelet's log reader.
	b, err := cs.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{TailLines: ptr(int64(1)), Timestamps: true}).DoRaw(t.Context())
	if ts, line, _ := strings.Cut(strings.TrimSuffix(string(b), "\n"), " "); err != nil || line != lines[len(lines)-1] || !strings.HasPrefix(ts, "20") {
		t.Errorf("tail 1 with timestamps: %q, %v; want a timestamp and %q", b, err, lines[len(lines)-1])
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	stream, err := cs.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{Follow: true}).Stream(ctx)
	if err != nil {
		t.Fatalf("follow: %v", err)
	}
	first := make([]byte, len(lines[0])+1)
	if _, err := io.ReadFull(stream, first); err != nil || string(first) != lines[0]+"\n" {
		t.Errorf("follow: read %q, %v; want %q", first, err, lines[0])
	}
	stream.Close()
}

func ptr[T any](v T) *T { return &v }

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// running reports whether pid is a live process (not a zombie), from /proc.
func running(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	f := strings.Fields(string(stat[i+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// shPod is a pod of one container running script in sh, on any node.
func shPod(name, script string) *corev1.Pod {
	return podbuilder.MakePod().Name(name).SchedulerName(corev1.DefaultSchedulerName).TerminationGracePeriod(5).
		Container("main", "registry.invalid/shell").Command("sh", "-c", script).Obj()
}

func create(t *testing.T, c *cluster.Cluster, ns string, pod *corev1.Pod) {
	t.Helper()
	if _, err := c.Clientset().CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", pod.Name, err)
	}
}

// waitPod polls the pod until cond holds, failing the test after a minute
// with the pod's last status.
func waitPod(t *testing.T, c *cluster.Cluster, ns, name, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.Clientset().CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = p
		return cond(p), nil
	})
	if err != nil {
		t.Fatalf("pod %s not %s: %v; last status: %s", name, what, err, describe(last))
	}
	return last
}

func describe(p *corev1.Pod) string {
	if p == nil {
		return "(never seen)"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "node %q phase %s ip %s msg %q", p.Spec.NodeName, p.Status.Phase, p.Status.PodIP, p.Status.Message)
	for _, c := range p.Status.Conditions {
		fmt.Fprintf(&b, "; %s=%s %s %s", c.Type, c.Status, c.Reason, c.Message)
	}
	for _, s := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		fmt.Fprintf(&b, "; container %s restarts %d ready %v state %+v last %+v", s.Name, s.RestartCount, s.Ready, s.State, s.LastTerminationState)
	}
	return b.String()
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func(ctx context.Context) (bool, string)) {
	t.Helper()
	var status string
	err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		var ok bool
		ok, status = cond(ctx)
		return ok, nil
	})
	if err != nil {
		t.Fatalf("%s: %v; last: %s", what, err, status)
	}
}

func podReady(p *corev1.Pod) bool { return condition(p, corev1.PodReady) == corev1.ConditionTrue }

func condition(p *corev1.Pod, t corev1.PodConditionType) corev1.ConditionStatus {
	for _, c := range p.Status.Conditions {
		if c.Type == t {
			return c.Status
		}
	}
	return ""
}

// podProcesses lists the processes whose working directory is in the
// pod's dir (every container's is, unless it sets workingDir elsewhere).
func podProcesses(t *testing.T, dir string) []int {
	t.Helper()
	if dir == "" {
		t.Fatal("pod has no dir on any node")
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err == nil && (cwd == dir || strings.HasPrefix(cwd, dir+"/")) {
			pids = append(pids, pid)
		}
	}
	return pids
}
