package gang_test

// Integration tests: muster's scheduler (bin/scheduler) against a real
// kube-apiserver and kube-controller-manager, with kwok nodes
// (4 nodes x 8 nvidia.com/gpu, racks a and b), from e2e/cluster.

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	spv1alpha1 "sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1"
	spclientset "sigs.k8s.io/scheduler-plugins/pkg/generated/clientset/versioned"
	"sigs.k8s.io/yaml"

	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/test/clustertest"
	"github.com/muster-dev/muster/test/podbuilder"
)

type groupSpec struct {
	name        string
	members     int
	gpus        int64
	size        string // muster.dev/size; "" means members
	topologyKey string
	sizeOf      func(i int) string // per-member size, for disagreement tests
	noSize      bool
	podGroupLbl bool // use scheduling.x-k8s.io/pod-group instead of muster.dev/group
	// upstream: the pods name a scheduling.k8s.io PodGroup (created by
	// createGroup, gang minCount = members) in spec.schedulingGroup and
	// carry no muster label or size.
	upstream    bool
	pgTopology  string            // the upstream PodGroup's topology key
	annotations map[string]string // added to every member
}

func newNamespace(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, strings.ToLower(t.Name()))
	if len(name) > 50 {
		name = name[:50]
	}
	name = strings.Trim(name, "-") + fmt.Sprintf("-%d", time.Now().UnixNano()%100000)
	_, err := cs.CoreV1().Namespaces().Create(context.Background(), &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		// Free the nodes for the next test at once: one delete-collection.
		_ = cs.CoreV1().Pods(name).DeleteCollection(context.Background(), metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{})
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
		waitNoPods(t, cs, name)
	})
	return name
}

func waitNoPods(t *testing.T, cs kubernetes.Interface, ns string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(pods.Items) == 0, nil
	})
	if err != nil {
		t.Errorf("pods of %s still present after a minute", ns)
	}
}

// member is pod i of a group for muster's scheduler, tolerating the taint
// kwok nodes carry; the caller adds its group and containers.
func member(ns, name string, i int) *podbuilder.PodWrapper {
	return podbuilder.MakePod().Namespace(ns).Name(name).PodIndex(i).SchedulerName("muster-scheduler").Toleration("kwok.x-k8s.io/node")
}

func createGroup(t *testing.T, cs kubernetes.Interface, ns string, g groupSpec) {
	t.Helper()
	for i := 0; i < g.members; i++ {
		p := member(ns, fmt.Sprintf("%s-%d", g.name, i), i).
			Container("model", "model").Command("serve").GPU(g.gpus).Request(v1.ResourceCPU, "1")
		switch {
		case g.upstream:
			p.SchedulingGroup(g.name)
		case g.podGroupLbl:
			p.PodGroup(g.name)
		default:
			p.Group(g.name)
		}
		switch {
		case g.upstream: // the PodGroup's minCount is the size
		case g.sizeOf != nil:
			p.Annotation(podapi.AnnotationSize, g.sizeOf(i))
		case g.noSize:
		case g.size != "":
			p.Annotation(podapi.AnnotationSize, g.size)
		default:
			p.Size(g.members)
		}
		if g.topologyKey != "" {
			p.TopologyKey(g.topologyKey)
		}
		for k, v := range g.annotations {
			p.Annotation(k, v)
		}
		if g.upstream && i == 0 {
			createUpstreamPodGroup(t, cs, ns, g.name, g.members, g.pgTopology)
		}
		pod := p.Obj()
		if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create pod %s: %v", pod.Name, err)
		}
	}
}

// boundNodes returns each member's node ("" while unbound).
func boundNodes(t *testing.T, cs kubernetes.Interface, ns, group string) map[string]string {
	t.Helper()
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list pods: %v", err)
	}
	out := map[string]string{}
	for _, p := range pods.Items {
		if groupOfPod(&p) == group {
			out[p.Name] = p.Spec.NodeName
		}
	}
	return out
}

// groupOfPod is the group a test pod was created in, whichever kind.
func groupOfPod(p *v1.Pod) string {
	if sg := p.Spec.SchedulingGroup; sg != nil && sg.PodGroupName != nil {
		return *sg.PodGroupName
	}
	if g := p.Labels["muster.dev/group"]; g != "" {
		return g
	}
	return p.Labels["scheduling.x-k8s.io/pod-group"]
}

func countBound(m map[string]string) int {
	n := 0
	for _, node := range m {
		if node != "" {
			n++
		}
	}
	return n
}

func waitBound(t *testing.T, cs kubernetes.Interface, ns, group string, n int, timeout time.Duration) map[string]string {
	t.Helper()
	var last map[string]string
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		last = boundNodes(t, cs, ns, group)
		return countBound(last) == n && len(last) == n, nil
	})
	if err != nil {
		t.Fatalf("group %s: %d of %d members bound after %s: %v", group, countBound(last), n, timeout, last)
	}
	return last
}

// waitEvent waits for an event on a pod of the namespace whose message
// contains want.
func waitEvent(t *testing.T, cs kubernetes.Interface, ns, want string) {
	t.Helper()
	var msgs []string
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		evs, err := cs.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		msgs = msgs[:0]
		for _, e := range evs.Items {
			msgs = append(msgs, e.Note)
			if strings.Contains(e.Note, want) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no event containing %q in %s; events: %q", want, ns, msgs)
	}
}

// assertStaysUnbound checks, for the given time, that no member of the
// group is bound. It is the "nothing held" half of all-or-nothing.
func assertStaysUnbound(t *testing.T, cs kubernetes.Interface, ns, group string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if b := boundNodes(t, cs, ns, group); countBound(b) > 0 {
			t.Fatalf("group %s that cannot fit has members bound: %v", group, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestGroupOfThreeIsBoundTogether(t *testing.T) {
	cs := client(t)
	ns := newNamespace(t, cs)
	start := time.Now()
	createGroup(t, cs, ns, groupSpec{name: "ga", members: 3, gpus: 4})
	nodes := waitBound(t, cs, ns, "ga", 3, time.Minute)
	t.Logf("group of 3 bound in %s: %v", time.Since(start).Round(time.Millisecond), nodes)
}

func TestGroupOfEightFillsTheCluster(t *testing.T) {
	cs := client(t)
	ns := newNamespace(t, cs)
	start := time.Now()
	// 8 x 4 GPUs = all 32 GPUs of the four nodes: only a whole-group plan
	// that packs two members per node gets every one of them placed.
	createGroup(t, cs, ns, groupSpec{name: "g8", members: 8, gpus: 4})
	nodes := waitBound(t, cs, ns, "g8", 8, time.Minute)
	perNode := map[string]int{}
	for _, n := range nodes {
		perNode[n]++
	}
	t.Logf("group of 8 bound in %s; members per node %v", time.Since(start).Round(time.Millisecond), perNode)
}

func TestGroupThatCannotFitHoldsNothingAndIsAdmittedWhenRoomFrees(t *testing.T) {
	cs := client(t)
	ns := newNamespace(t, cs)
	// a takes 3 of the 4 nodes; b needs 2 whole nodes and must hold none.
	createGroup(t, cs, ns, groupSpec{name: "a", members: 3, gpus: 8})
	waitBound(t, cs, ns, "a", 3, time.Minute)
	createGroup(t, cs, ns, groupSpec{name: "b", members: 2, gpus: 8})
	waitEvent(t, cs, ns, "group b: 1 of 2 members fit; waiting for capacity")
	assertStaysUnbound(t, cs, ns, "b", 2*time.Second)
	// a finishes: b is admitted as a whole.
	start := time.Now()
	if err := cs.CoreV1().Pods(ns).DeleteCollection(context.Background(), metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{LabelSelector: "muster.dev/group=a"}); err != nil {
		t.Fatal(err)
	}
	waitBound(t, cs, ns, "b", 2, time.Minute)
	t.Logf("waiting group admitted %s after room freed", time.Since(start).Round(time.Millisecond))
}

func TestGroupLargerThanTheClusterHoldsNothing(t *testing.T) {
	cs := client(t)
	ns := newNamespace(t, cs)
	createGroup(t, cs, ns, groupSpec{name: "huge", members: 5, gpus: 8})
	waitEvent(t, cs, ns, "group huge: 4 of 5 members fit; waiting for capacity")
	assertStaysUnbound(t, cs, ns, "huge", 2*time.Second)
	// And it does not block a group that fits.
	createGroup(t, cs, ns, groupSpec{name: "small", members: 2, gpus: 2})
	waitBound(t, cs, ns, "small", 2, time.Minute)
}

func TestMembersAreNotScheduledUntilAllExist(t *testing.T) {
	cs := client(t)
	ns := newNamespace(t, cs)
	createGroup(t, cs, ns, groupSpec{name: "late", members: 2, gpus: 1, size: "3"})
	assertStaysUnbound(t, cs, ns, "late", 2*time.Second)
	// The third member arrives: all three bind.
	p := member(ns, "late-2", 2).Group("late").Size(3).Container("c", "x").Command("x").Obj()
	if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitBound(t, cs, ns, "late", 3, time.Minute)
}

func TestTopologyKeepsTheGroupInOneRack(t *testing.T) {
	cs := client(t)
	ns := newNamespace(t, cs)
	createGroup(t, cs, ns, groupSpec{name: "rack", members: 4, gpus: 4, topologyKey: "topology.muster.dev/rack"})
	nodes := waitBound(t, cs, ns, "rack", 4, time.Minute)
	racks := map[string]bool{}
	for _, n := range nodes {
		racks[rackOf(n)] = true
	}
	if len(racks) != 1 {
		t.Fatalf("group spread over racks %v: %v", racks, nodes)
	}
	// Three whole nodes never fit in one rack of two nodes.
	createGroup(t, cs, ns, groupSpec{name: "toobig", members: 3, gpus: 8, topologyKey: "topology.muster.dev/rack"})
	waitEvent(t, cs, ns, "group toobig: 2 of 3 members fit; waiting for capacity (all in one topology.muster.dev/rack domain)")
	assertStaysUnbound(t, cs, ns, "toobig", time.Second)
	// A topology key no node has: the message says so (not a wait for
	// capacity that can never come).
	createGroup(t, cs, ns, groupSpec{name: "nolabel", members: 2, gpus: 1, topologyKey: "nvidia.com/gpu.clique"})
	waitEvent(t, cs, ns, "group nolabel: 0 of 2 members fit; waiting for capacity (all in one nvidia.com/gpu.clique domain, and no node has label nvidia.com/gpu.clique: label the nodes, or drop muster.dev/topology-key)")
}

// rackOf follows the local cluster's layout: node-0, node-1 in rack-a,
// node-2, node-3 in rack-b.
func rackOf(node string) string {
	switch node {
	case "node-0", "node-1":
		return "rack-a"
	}
	return "rack-b"
}

func TestBadInputStaysPendingWithAnEventAndHarmsNoOne(t *testing.T) {
	cs := client(t)
	ns := newNamespace(t, cs)
	createGroup(t, cs, ns, groupSpec{name: "typo", members: 2, gpus: 1, size: "two"})
	createGroup(t, cs, ns, groupSpec{name: "split", members: 2, gpus: 1, sizeOf: func(i int) string { return fmt.Sprint(2 + i) }})
	createGroup(t, cs, ns, groupSpec{name: "nosize", members: 1, gpus: 1, noSize: true})
	createGroup(t, cs, ns, groupSpec{name: "fine", members: 2, gpus: 1})
	waitBound(t, cs, ns, "fine", 2, time.Minute)
	waitEvent(t, cs, ns, `muster.dev/size="two" is not a positive whole number`)
	waitEvent(t, cs, ns, "members of group split disagree on muster.dev/size")
	waitEvent(t, cs, ns, "has no size: set annotation muster.dev/size")
	for _, g := range []string{"typo", "split", "nosize"} {
		if b := boundNodes(t, cs, ns, g); countBound(b) > 0 {
			t.Errorf("invalid group %s got bound: %v", g, b)
		}
	}
}

func TestSixGroupsCompetingForRoomForThreeAllRunWithoutPartialHolds(t *testing.T) {
	cs := client(t)
	ns := newNamespace(t, cs)
	// 5 members x 2 GPUs = 10 GPUs a group; 32 GPUs hold three groups.
	const groups, members = 6, 5
	var names []string
	for i := 0; i < groups; i++ {
		names = append(names, fmt.Sprintf("c%d", i))
		createGroup(t, cs, ns, groupSpec{name: names[i], members: members, gpus: 2})
	}
	r := runTurns(t, cs, ns, names, members, 2, 1500*time.Millisecond)
	if r.maxHeld > 3 {
		t.Fatalf("%d groups bound at once on room for 3", r.maxHeld)
	}
	t.Logf("6 competing groups all ran in %s (at most %d at once); bound after %v", r.took.Round(time.Millisecond), r.maxHeld, r.ran)
}

// turns is what runTurns saw.
type turns struct {
	ran     map[string]time.Duration // group -> fully bound after
	maxHeld int                      // groups fully bound at once
	maxGPUs int64                    // GPUs bound at once
	took    time.Duration
}

// runTurns watches groups (members pods of gpus GPUs each, in namespace
// ns) every 50 ms until each has been fully bound, deleting each group a
// fixed hold after it was: groups finish and free their room. It fails the
// test if any group is seen partly bound for over a second (binding a group
// is one API call per member; longer is capacity held without running), or
// if not every group ran within 3 minutes.
func runTurns(t *testing.T, cs kubernetes.Interface, ns string, groups []string, members int, gpus int64, hold time.Duration) turns {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	r := turns{ran: map[string]time.Duration{}}
	partial := map[string]time.Time{}
	boundAt := map[string]time.Time{}
	deleted := map[string]bool{}
	var violated []string
	for len(r.ran) < len(groups) {
		if ctx.Err() != nil {
			t.Fatalf("only %d of %d groups ran within 3 minutes: %v", len(r.ran), len(groups), r.ran)
		}
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		bound, total := map[string]int{}, map[string]int{}
		var gpusBound int64
		for i := range pods.Items {
			g := groupOfPod(&pods.Items[i])
			total[g]++
			if pods.Items[i].Spec.NodeName != "" {
				bound[g]++
				gpusBound += gpus
			}
		}
		r.maxGPUs = max(r.maxGPUs, gpusBound)
		held := 0
		now := time.Now()
		for g := range total {
			switch {
			case bound[g] == members:
				delete(partial, g)
				held++
				if _, ok := boundAt[g]; !ok {
					boundAt[g], r.ran[g] = now, now.Sub(start)
				}
			case bound[g] > 0:
				if t0, ok := partial[g]; !ok {
					partial[g] = now
				} else if now.Sub(t0) > time.Second {
					violated = append(violated, fmt.Sprintf("%s: %d of %d bound for %s", g, bound[g], members, now.Sub(t0)))
				}
			default:
				delete(partial, g)
			}
		}
		r.maxHeld = max(r.maxHeld, held)
		for g, at := range boundAt {
			if !deleted[g] && now.Sub(at) > hold {
				deleted[g] = true
				for i := 0; i < members; i++ {
					_ = cs.CoreV1().Pods(ns).Delete(ctx, fmt.Sprintf("%s-%d", g, i), metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(violated) > 0 {
		t.Fatalf("partial holds: %v", violated)
	}
	r.took = time.Since(start)
	return r
}

func TestStatefulSetExampleIsScheduledAsOneGroupInOneRack(t *testing.T) {
	cs := client(t)
	ns := newNamespace(t, cs)
	root, err := clustertest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", "examples", "statefulset-gang.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var sts appsv1.StatefulSet
	if err := yaml.UnmarshalStrict(b, &sts); err != nil {
		t.Fatalf("deploy/examples/statefulset-gang.yaml: %v", err)
	}
	start := time.Now()
	if _, err := cs.AppsV1().StatefulSets(ns).Create(context.Background(), &sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The StatefulSet controller (kube-controller-manager) creates the pods
	// with their pod-index labels; the scheduler binds all four together.
	nodes := waitBound(t, cs, ns, "mixtral", 4, time.Minute)
	racks := map[string]bool{}
	for _, n := range nodes {
		racks[rackOf(n)] = true
	}
	if len(racks) != 1 {
		t.Fatalf("StatefulSet group spread over racks: %v", nodes)
	}
	t.Logf("StatefulSet of 4 created and bound in one rack in %s: %v", time.Since(start).Round(time.Millisecond), nodes)
	if err := cs.AppsV1().StatefulSets(ns).Delete(context.Background(), sts.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestPodGroupMinMemberSizesAGroupLabelledTheSchedulerPluginsWay(t *testing.T) {
	c := clustertest.Shared(t)
	cs := client(t)
	installPodGroupCRD(t, c.RESTConfig())
	ns := newNamespace(t, cs)
	sp, err := spclientset.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	pg := &spv1alpha1.PodGroup{ObjectMeta: metav1.ObjectMeta{Name: "lws-0", Namespace: ns}, Spec: spv1alpha1.PodGroupSpec{MinMember: 3}}
	if _, err := sp.SchedulingV1alpha1().PodGroups(ns).Create(context.Background(), pg, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create PodGroup: %v", err)
	}
	// Two of three members, labelled as LeaderWorkerSet labels them and with
	// no muster.dev/size: the PodGroup's minMember (3) holds them back.
	createGroup(t, cs, ns, groupSpec{name: "lws-0", members: 2, gpus: 2, noSize: true, podGroupLbl: true})
	assertStaysUnbound(t, cs, ns, "lws-0", 2*time.Second)
	third := member(ns, "lws-0-2", 2).PodGroup("lws-0").Container("c", "x").Command("x").Obj()
	if _, err := cs.CoreV1().Pods(ns).Create(context.Background(), third, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitBound(t, cs, ns, "lws-0", 3, time.Minute)
}

// installPodGroupCRD applies scheduler-plugins' PodGroup CRD from deploy/crds
// and waits until it is served.
func installPodGroupCRD(t *testing.T, cfg *rest.Config) {
	t.Helper()
	root, err := clustertest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", "crds", "scheduling.x-k8s.io_podgroups.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatalf("decode PodGroup CRD: %v", err)
	}
	ax, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := ax.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create PodGroup CRD: %v", err)
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := ax.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range got.Status.Conditions {
			if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("PodGroup CRD not established: %v", err)
	}
}

func TestSchedulerExportsGroupMetrics(t *testing.T) {
	c := clustertest.Shared(t)
	cs := client(t)
	ns := newNamespace(t, cs)
	createGroup(t, cs, ns, groupSpec{name: "metered", members: 2, gpus: 1})
	waitBound(t, cs, ns, "metered", 2, time.Minute)
	hc, err := rest.HTTPClientFor(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	var body string
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		resp, err := hc.Get(c.SchedulerURL() + "/metrics")
		if err != nil {
			return false, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == 200 && strings.Contains(body, "muster_group_bind_duration_seconds_count"), nil
	})
	if err != nil {
		t.Fatalf("scheduler /metrics has no muster_group_bind_duration_seconds: %v\n%.2000s", err, body)
	}
	for _, want := range []string{"muster_group_bind_duration_seconds_count", "muster_groups_waiting", "muster_groups_waiting_to_bind", `muster_group_admission_attempts_total{result="fits"}`} {
		if !strings.Contains(body, want) {
			t.Errorf("scheduler /metrics lacks %s", want)
		}
	}
}
