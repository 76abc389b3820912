package cluster_test

import (
	"context"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/muster-dev/muster/e2e/cluster"
	"github.com/muster-dev/muster/test/clustertest"
	"github.com/muster-dev/muster/test/podbuilder"
)

func TestMain(m *testing.M) { clustertest.Main(m) }

func TestRackName(t *testing.T) {
	for i, want := range map[int]string{0: "rack-a", 1: "rack-b", 25: "rack-z", 26: "rack-aa", 27: "rack-ab", 51: "rack-az", 52: "rack-ba", 701: "rack-zz", 702: "rack-aaa"} {
		if got := cluster.RackName(i); got != want {
			t.Errorf("RackName(%d) = %q, want %q", i, got, want)
		}
	}
}

func TestNodeShape(t *testing.T) {
	s := cluster.DefaultNodeShape()
	s.Count, s.RackSize, s.GPUs = 5, 2, 4
	nodes, err := s.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	var racks []string
	for _, n := range nodes {
		racks = append(racks, n.Labels[cluster.RackLabel])
		if q := n.Status.Allocatable[cluster.GPUResource]; q.Value() != 4 {
			t.Errorf("%s: %d GPUs allocatable, want 4", n.Name, q.Value())
		}
	}
	if want := []string{"rack-a", "rack-a", "rack-b", "rack-b", "rack-c"}; !slices.Equal(racks, want) {
		t.Errorf("racks %v, want %v", racks, want)
	}
	s.Memory = "lots"
	if _, err := s.Nodes(); err == nil || !strings.Contains(err.Error(), "memory") {
		t.Errorf("bad memory: err = %v, want one naming memory", err)
	}
}

// TestControlPlane: the shared cluster runs Kubernetes 1.37.2 with the gang
// scheduling API on, and has the default four nodes, Ready, with 8 GPUs
// each, two per rack.
func TestControlPlane(t *testing.T) {
	c := clustertest.Shared(t)
	cs := c.Clientset()
	ctx := t.Context()

	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.GitVersion != "v1.37.2" {
		t.Errorf("server version %q, want v1.37.2 (ldflags of make kube-bins)", v.GitVersion)
	}
	if body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil {
		t.Errorf("/readyz: %v: %s", err, body)
	}
	res, err := cs.Discovery().ServerResourcesForGroupVersion("scheduling.k8s.io/v1beta1")
	if err != nil {
		t.Fatalf("scheduling.k8s.io/v1beta1 not served (GenericWorkload gate, --runtime-config): %v", err)
	}
	var names []string
	for _, r := range res.APIResources {
		names = append(names, r.Name)
	}
	for _, want := range []string{"podgroups", "workloads"} {
		if !slices.Contains(names, want) {
			t.Errorf("scheduling.k8s.io/v1beta1 serves %v, want %s", names, want)
		}
	}

	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantRack := map[string]string{"node-0": "rack-a", "node-1": "rack-a", "node-2": "rack-b", "node-3": "rack-b"}
	if len(nodes.Items) != len(wantRack) {
		t.Fatalf("%d nodes, want %d", len(nodes.Items), len(wantRack))
	}
	for _, n := range nodes.Items {
		if got := n.Labels[cluster.RackLabel]; got != wantRack[n.Name] {
			t.Errorf("%s: %s=%q, want %q", n.Name, cluster.RackLabel, got, wantRack[n.Name])
		}
		if got := n.Labels[corev1.LabelHostname]; got != n.Name {
			t.Errorf("%s: hostname label %q", n.Name, got)
		}
		for _, list := range []corev1.ResourceList{n.Status.Capacity, n.Status.Allocatable} {
			if q := list[cluster.GPUResource]; q.Cmp(resource.MustParse("8")) != 0 {
				t.Errorf("%s: %s %s, want 8", n.Name, cluster.GPUResource, q.String())
			}
		}
		ready := false
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				ready = true
			}
		}
		if !ready {
			t.Errorf("%s: not Ready: %+v", n.Name, n.Status.Conditions)
		}
		for _, taint := range n.Spec.Taints {
			t.Errorf("%s: taint %s", n.Name, taint.ToString())
		}
	}
}

// TestPodRuns: a plain pod for the default scheduler is bound to a kwok
// node and kwok reports it Running, with a loopback pod IP.
func TestPodRuns(t *testing.T) {
	c := clustertest.Shared(t)
	ns := clustertest.Namespace(t, c)
	cs := c.Clientset()
	// Any image: kwok pulls nothing.
	pod := podbuilder.MakePod().Name("plain").SchedulerName(corev1.DefaultSchedulerName).
		Container("main", "registry.invalid/none").GPU(1).Obj()
	if _, err := cs.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	var got *corev1.Pod
	err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		got = p
		return p.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("pod not Running within a minute: %v; last seen: node %q phase %q conditions %+v", err, got.Spec.NodeName, got.Status.Phase, got.Status.Conditions)
	}
	if !slices.Contains(c.Nodes(), got.Spec.NodeName) {
		t.Errorf("pod bound to %q, not one of %v", got.Spec.NodeName, c.Nodes())
	}
	if ip := net.ParseIP(got.Status.PodIP); ip == nil || !ip.IsLoopback() {
		t.Errorf("pod IP %q, want a loopback address", got.Status.PodIP)
	}
	if got.Status.HostIP != "127.0.0.1" {
		t.Errorf("host IP %q, want 127.0.0.1", got.Status.HostIP)
	}
}

// TestFailureAndStop: a private cluster notices a component that dies, and
// Stop leaves no process of it behind (nor anything in their process
// groups), and closes etcd.
func TestFailureAndStop(t *testing.T) {
	c := clustertest.New(t, func(cfg *cluster.Config) {
		cfg.Nodes.(*cluster.KwokNodes).Shape.Count = 1
	})
	procs := c.Processes()
	var kwok *cluster.Process
	for _, p := range procs {
		if p.Name == "kwok" {
			kwok = p
		}
	}
	if len(procs) != 4 || kwok == nil {
		t.Fatalf("processes %v, want kube-apiserver, kube-controller-manager, scheduler, kwok", names(procs))
	}
	if st, err := cluster.ReadState(c.Dir()); err != nil || st.PID != os.Getpid() || len(st.Processes) != 4 {
		t.Errorf("state.json: %+v, %v", st, err)
	}

	if err := syscall.Kill(kwok.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Failed():
		if err := c.Err(); err == nil || !strings.Contains(err.Error(), "kwok exited") {
			t.Errorf("Err() = %v, want kwok's exit", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no failure reported 30s after kwok was killed")
	}

	etcd, err := url.Parse(c.EtcdURL())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	for _, p := range procs {
		select {
		case <-p.Done():
		default:
			t.Errorf("%s (pid %d) not reaped after Stop", p.Name, p.PID())
		}
		if cluster.Alive(p.PID()) {
			t.Errorf("%s (pid %d) still alive after Stop", p.Name, p.PID())
		}
		if left := inGroup(t, p.PID()); len(left) > 0 {
			t.Errorf("%s's process group %d still has pids %v", p.Name, p.PID(), left)
		}
	}
	if conn, err := net.DialTimeout("tcp", etcd.Host, time.Second); err == nil {
		conn.Close()
		t.Errorf("etcd still accepts connections at %s after Stop", etcd.Host)
	}
	if _, err := os.Stat(filepath.Join(c.StateDir(), "state.json")); !os.IsNotExist(err) {
		t.Errorf("state.json still there after Stop (err %v)", err)
	}
}

func names(ps []*cluster.Process) []string {
	var n []string
	for _, p := range ps {
		n = append(n, p.Name)
	}
	return n
}

// inGroup lists the processes in process group pgid, from /proc.
func inGroup(t *testing.T, pgid int) []int {
	t.Helper()
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
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces, so split
		// after its closing parenthesis.
		i := strings.LastIndexByte(string(stat), ')')
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestClusterIPsGoNowhere: nothing serves ClusterIPs here (no kube-proxy),
// so the cluster routes the service range nowhere: the kernel's route for
// the kubernetes Service's address is a blackhole, not the default route
// off the machine. (ip route get asks the kernel without sending.)
func TestClusterIPsGoNowhere(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the route needs root")
	}
	c := clustertest.Shared(t)
	svc, err := c.Clientset().CoreV1().Services("default").Get(t.Context(), "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "route", "show", "type", "blackhole").Output()
	if err != nil {
		t.Fatal(err)
	}
	covered := false
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		if p, err := netip.ParsePrefix(f[1]); err == nil && p.Contains(ip) {
			covered = true
		}
	}
	if !covered {
		t.Errorf("no blackhole route covers ClusterIP %s (blackhole routes: %q)", ip, out)
	}
	// The kernel refuses to route there (a normal route would name a
	// gateway off the machine).
	if out, err := exec.Command("ip", "route", "get", ip.String()).CombinedOutput(); err == nil {
		t.Errorf("ip route get %s: %q; want the kernel to refuse (blackhole)", ip, out)
	}
}
