// Package gang is muster's scheduler plugin: it admits all pods of a group
// at once, or none. It is glue between the scheduling framework, the pod
// contract (podapi: which group a pod belongs to, its size and topology),
// the placement of a group's members (placement.go, domain.go) and the
// whole-group fit check in scheduler-plugin/fit.
//
// How a group is scheduled:
//  1. PreEnqueue keeps every member out of the queue until all of them
//     exist and agree on the group's size.
//  2. QueueSort orders groups first come, first served (by the creation
//     time of the group's first pod), and keeps a group's members adjacent.
//  3. PreFilter, for each member, checks on the current snapshot that every
//     member not yet placed can be placed at once (resources, taints,
//     node affinity, one topology domain). If not, nothing is reserved, the
//     group's members already waiting at Permit are released, and the pod
//     is told why ("group g: 2 of 3 members fit; waiting for capacity").
//     If so, the pod is pinned to the node the plan gave it.
//  4. Permit holds members until the last one is reserved, then lets them
//     all bind together, one group binding at a time (bindgate.go): a
//     group let in binds its members side by side and is whole within one
//     round of API calls, so at most one group is ever partly on nodes.
//     A timeout, or any member failing, releases every reservation of the
//     group at once (Unreserve, PostFilter).
package gang

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/features"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/feature"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/topologyaware"

	spv1alpha1 "sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1"
	spclientset "sigs.k8s.io/scheduler-plugins/pkg/generated/clientset/versioned"
	spinformers "sigs.k8s.io/scheduler-plugins/pkg/generated/informers/externalversions"
	splisters "sigs.k8s.io/scheduler-plugins/pkg/generated/listers/scheduling/v1alpha1"

	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/scheduler-plugin/fit"
)

// Name is the plugin's name in the scheduler configuration.
const Name = "MusterGang"

// DefaultPermitTimeout bounds how long reserved members wait at Permit for
// the rest of their group. The fit check has already shown the whole group
// fits, so members normally follow each other within milliseconds; the
// timeout only matters when another scheduler takes the capacity meanwhile.
const DefaultPermitTimeout = 60 * time.Second

// Gang implements the plugin.
type Gang struct {
	handle  fwk.Handle
	byGroup cache.Indexer // pods by group key (groupIndex)
	log     klog.Logger
	stop    <-chan struct{}

	pgMu sync.Mutex
	// podGroups lists scheduler-plugins PodGroups (size = minMember); nil
	// while their CRD is not installed.
	podGroups splisters.PodGroupLister
	pgTried   time.Time

	mu sync.Mutex
	// firstSeen is when each group's first pod was created: the order in
	// which groups are served.
	firstSeen map[podapi.Key]time.Time
	// waiting holds the groups seen and not yet fully bound.
	waiting map[podapi.Key]bool
	// gate lets released groups into binding one at a time.
	gate *bindGate
	// reported remembers the last warning sent per pod, so that a pod
	// retried in a loop does not flood the event stream.
	reported map[string]string

	// upstreamGang is true when this scheduler runs with Kubernetes'
	// GenericWorkload gate: pods naming a scheduling.k8s.io PodGroup in
	// spec.schedulingGroup are then placed by the scheduler's own pod-group
	// cycle (plugins GangScheduling, TopologyPlacementGenerator), and
	// MusterGang steps aside for them at every extension point, so no pod
	// is ever held by both. With the gate off, MusterGang places them.
	upstreamGang bool
	// topology generates the upstream pod-group cycle's placements: the
	// upstream plugin, fed muster.dev/topology-key when the PodGroup names
	// no topology of its own.
	topology fwk.PlacementGeneratePlugin
}

var (
	_ fwk.QueueSortPlugin         = &Gang{}
	_ fwk.PreEnqueuePlugin        = &Gang{}
	_ fwk.PreFilterPlugin         = &Gang{}
	_ fwk.PostFilterPlugin        = &Gang{}
	_ fwk.ReservePlugin           = &Gang{}
	_ fwk.PermitPlugin            = &Gang{}
	_ fwk.PostBindPlugin          = &Gang{}
	_ fwk.EnqueueExtensions       = &Gang{}
	_ fwk.PlacementGeneratePlugin = &Gang{}
)

// New builds the plugin. It takes no arguments.
func New(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
	registerMetrics()
	g := &Gang{
		handle:       h,
		log:          klog.FromContext(ctx).WithValues("plugin", Name),
		firstSeen:    map[podapi.Key]time.Time{},
		reported:     map[string]string{},
		waiting:      map[podapi.Key]bool{},
		gate:         newBindGate(maxBindingGroups),
		stop:         ctx.Done(),
		upstreamGang: utilfeature.DefaultFeatureGate.Enabled(features.GenericWorkload),
	}
	tp, err := topologyaware.New(ctx, nil, h, feature.NewSchedulerFeaturesFromGates(utilfeature.DefaultFeatureGate))
	if err != nil {
		return nil, fmt.Errorf("%s: topology placement: %w", Name, err)
	}
	g.topology = tp
	// Pods by group: the scheduler's pod informer has no namespace index,
	// so a label-selected list would scan every pod of the cluster, for
	// every member at every extension point.
	// Each profile makes its own MusterGang on the one shared informer.
	if err := g.usePods(h.SharedInformerFactory().Core().V1().Pods().Informer()); err != nil {
		return nil, err
	}
	if err := g.watchPodGroups(ctx); err != nil {
		return nil, err
	}
	return g, nil
}

// usePods indexes the scheduler's pod informer by group (once: each
// profile makes its own MusterGang on the one shared informer), reads
// groups' members from it, and forgets a group when its last pod is
// deleted (podDeleted).
func (g *Gang) usePods(inf cache.SharedIndexInformer) error {
	if _, done := inf.GetIndexer().GetIndexers()[groupIndex]; !done {
		if err := inf.AddIndexers(cache.Indexers{groupIndex: groupIndexFunc}); err != nil {
			return fmt.Errorf("%s: index pods by group: %w", Name, err)
		}
	}
	g.byGroup = inf.GetIndexer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{DeleteFunc: g.podDeleted}); err != nil {
		return fmt.Errorf("%s: watch pod deletions: %w", Name, err)
	}
	return nil
}

// groupIndex indexes pods by their group's key (namespace/name).
const groupIndex = "muster.dev/group"

func groupIndexFunc(obj any) ([]string, error) {
	if p, ok := obj.(*v1.Pod); ok {
		if k, ok := podapi.Of(p); ok {
			return []string{k.String()}, nil
		}
	}
	return nil, nil
}

// watchPodGroups starts a PodGroup informer when scheduler-plugins' CRD is
// installed, so that groups sized by a PodGroup's minMember work as LWS,
// Kubeflow and Kueue users expect. Without the CRD, sizes come from the
// muster.dev/size annotation; the check is repeated (at most every 2s)
// when a pod without that annotation shows up, so a CRD installed after
// the scheduler started is picked up.
func (g *Gang) watchPodGroups(ctx context.Context) error {
	g.pgMu.Lock()
	defer g.pgMu.Unlock()
	if g.podGroups != nil || g.handle.KubeConfig() == nil || time.Since(g.pgTried) < 2*time.Second {
		return nil
	}
	g.pgTried = time.Now()
	gv := spv1alpha1.SchemeGroupVersion.String()
	if _, err := g.handle.ClientSet().Discovery().ServerResourcesForGroupVersion(gv); err != nil {
		g.log.V(2).Info("PodGroup CRD not installed; group sizes come from the muster.dev/size annotation", "group_version", gv)
		return nil
	}
	cs, err := spclientset.NewForConfig(g.handle.KubeConfig())
	if err != nil {
		return fmt.Errorf("%s: PodGroup client: %w", Name, err)
	}
	f := spinformers.NewSharedInformerFactory(cs, 0)
	lister := f.Scheduling().V1alpha1().PodGroups().Lister()
	f.Start(g.stop)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for typ, ok := range f.WaitForCacheSync(sctx.Done()) {
		if !ok {
			return fmt.Errorf("%s: sync %v informer", Name, typ)
		}
	}
	g.podGroups = lister
	g.log.Info("sizing groups from scheduler-plugins PodGroups too", "group_version", gv)
	return nil
}

func (g *Gang) podGroupLister() splisters.PodGroupLister {
	g.pgMu.Lock()
	defer g.pgMu.Unlock()
	return g.podGroups
}

// Name returns the plugin's name.
func (g *Gang) Name() string { return Name }

// groupOf is the group MusterGang places pod in; ok is false for a pod of
// no group and for one the scheduler's own pod-group cycle places (see
// upstreamGang).
func (g *Gang) groupOf(pod *v1.Pod) (podapi.Key, bool) {
	if g.upstreamGang && podapi.SchedulingGroup(pod) != "" {
		return podapi.Key{}, false
	}
	return podapi.Of(pod)
}

// GeneratePlacements serves the upstream pod-group cycle (groups named by
// spec.schedulingGroup): the candidate placements are those of Kubernetes'
// own TopologyPlacementGenerator, one per domain of the PodGroup's
// topology key; a PodGroup without one takes muster.dev/topology-key from
// its pods, so either way of asking for one domain works on either kind of
// group. Only one PlacementGenerate plugin runs per profile: MusterGang
// replaces TopologyPlacementGenerator in muster's profile.
func (g *Gang) GeneratePlacements(ctx context.Context, state fwk.PodGroupCycleState, pg fwk.PodGroupInfo, parent *fwk.Placement) (*fwk.GeneratePlacementsResult, *fwk.Status) {
	return g.topology.GeneratePlacements(ctx, state, withTopologyKey(pg), parent)
}

// Less orders the queue: priority first, then groups by the creation time
// of their first pod (first come, first served), members of one group
// together in ordinal order. Pods of no group are ordered by their own
// creation time among the groups.
func (g *Gang) Less(a, b fwk.QueuedEntityInfo) bool {
	if pa, pb := a.GetPriority(), b.GetPriority(); pa != pb {
		return pa > pb
	}
	ka, kb := g.sortKey(a), g.sortKey(b)
	if !ka.at.Equal(kb.at) {
		return ka.at.Before(kb.at)
	}
	if ka.group != kb.group {
		return ka.group < kb.group
	}
	if ka.ordinal != kb.ordinal {
		return ka.ordinal < kb.ordinal
	}
	return ka.name < kb.name
}

type sortKey struct {
	at      time.Time
	group   string
	ordinal int
	name    string
}

func (g *Gang) sortKey(e fwk.QueuedEntityInfo) sortKey {
	pi, ok := e.(interface{ GetPodInfo() fwk.PodInfo })
	if !ok || pi.GetPodInfo() == nil {
		return sortKey{at: e.GetTimestamp()}
	}
	pod := pi.GetPodInfo().GetPod()
	k := sortKey{at: pod.CreationTimestamp.Time, ordinal: podapi.Ordinal(pod), name: pod.Namespace + "/" + pod.Name}
	if key, ok := podapi.Of(pod); ok {
		k.group = key.String()
		k.at = g.groupTime(key, pod.CreationTimestamp.Time)
	}
	return k
}

func (g *Gang) groupTime(k podapi.Key, created time.Time) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	t, ok := g.firstSeen[k]
	if !ok || created.Before(t) {
		g.firstSeen[k] = created
		return created
	}
	return t
}

// PreEnqueue keeps a member out of the queue until its whole group exists.
func (g *Gang) PreEnqueue(ctx context.Context, pod *v1.Pod) *fwk.Status {
	key, ok := g.groupOf(pod)
	if !ok {
		return nil
	}
	m, err := g.members(key, pod)
	if err != nil {
		g.warn(pod, "InvalidGroup", err.Error())
		invalidMembers.Inc()
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, err.Error())
	}
	g.markWaiting(key, true)
	if len(m.active) < m.size {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable,
			fmt.Sprintf("group %s: %d of %d members exist; waiting for the rest before scheduling any", key.Name, len(m.active), m.size))
	}
	return nil
}

// PreFilter runs the whole-group fit check and pins the pod to its node in
// the plan.
func (g *Gang) PreFilter(ctx context.Context, state fwk.CycleState, pod *v1.Pod, nodes []fwk.NodeInfo) (*fwk.PreFilterResult, *fwk.Status) {
	key, ok := g.groupOf(pod)
	if !ok {
		return nil, fwk.NewStatus(fwk.Skip)
	}
	m, err := g.members(key, pod)
	if err != nil {
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, err.Error())
	}
	if len(m.active) < m.size {
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable,
			fmt.Sprintf("group %s: %d of %d members exist", key.Name, len(m.active), m.size))
	}
	placed, unplaced, domain := g.split(m)
	need := m.size - len(placed)
	if need < len(unplaced) {
		unplaced = unplaced[:max(need, 0)]
	}
	if !containsPod(unplaced, pod) {
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable,
			fmt.Sprintf("group %s already has %d members placed (%s=%d); pod %s is beyond the group's size", key.Name, len(placed), podapi.AnnotationSize, m.size, pod.Name))
	}
	var members []fit.Member
	for _, p := range unplaced {
		members = append(members, fit.Member{Pod: p, Requests: fit.Requests(p)})
	}
	plan := fit.Plan(members, snapshotNodes(nodes), m.topologyKey, domain)
	admissionAttempts.WithLabelValues(resultLabel(plan.OK)).Inc()
	if !plan.OK {
		msg := fmt.Sprintf("group %s: %d of %d members fit; waiting for capacity", key.Name, len(placed)+plan.Fit, m.size)
		switch {
		case m.topologyKey != "" && !anyLabelled(nodes, m.topologyKey):
			msg += fmt.Sprintf(" (all in one %s domain, and no node has label %s: label the nodes, or drop %s)", m.topologyKey, m.topologyKey, podapi.AnnotationTopologyKey)
		case m.topologyKey != "":
			msg += fmt.Sprintf(" (all in one %s domain)", m.topologyKey)
		}
		// Nothing held by a group that cannot fit: release members that
		// were reserved before capacity went away.
		g.rejectWaiting(key, msg)
		g.warn(pod, "GroupWaiting", msg)
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, msg)
	}
	return &fwk.PreFilterResult{NodeNames: sets.New(plan.Placement[pod.Name])}, nil
}

// anyLabelled says whether any node carries label key.
func anyLabelled(nodes []fwk.NodeInfo, key string) bool {
	for _, n := range nodes {
		if node := n.Node(); node != nil {
			if _, ok := node.Labels[key]; ok {
				return true
			}
		}
	}
	return false
}

// PreFilterExtensions is not used: the plan is made per cycle.
func (g *Gang) PreFilterExtensions() fwk.PreFilterExtensions { return nil }

// PostFilter releases the group when one of its members found no node.
func (g *Gang) PostFilter(ctx context.Context, state fwk.CycleState, pod *v1.Pod, _ fwk.NodeToStatusReader) (*fwk.PostFilterResult, *fwk.Status) {
	key, ok := g.groupOf(pod)
	if !ok {
		return nil, fwk.NewStatus(fwk.Unschedulable)
	}
	msg := fmt.Sprintf("group %s: member %s did not fit where the group's plan put it; releasing the group", key.Name, pod.Name)
	g.rejectWaiting(key, msg)
	return nil, fwk.NewStatus(fwk.Unschedulable, msg)
}

// Reserve has nothing to do: the scheduler's cache holds the reservation.
func (g *Gang) Reserve(ctx context.Context, state fwk.CycleState, pod *v1.Pod, nodeName string) *fwk.Status {
	return nil
}

// Unreserve releases every other reservation of the group when one member
// is rejected (permit timeout, a failed bind, a rejected peer).
func (g *Gang) Unreserve(ctx context.Context, state fwk.CycleState, pod *v1.Pod, nodeName string) {
	if key, ok := g.groupOf(pod); ok {
		g.rejectWaiting(key, fmt.Sprintf("group %s: member %s was rejected; releasing the whole group", key.Name, pod.Name))
	}
}

// Permit holds a reserved member until every member is reserved, then
// lets the whole group bind.
func (g *Gang) Permit(ctx context.Context, state fwk.CycleState, pod *v1.Pod, nodeName string) (*fwk.Status, time.Duration) {
	key, ok := g.groupOf(pod)
	if !ok {
		return nil, 0
	}
	m, err := g.members(key, pod)
	if err != nil {
		return fwk.NewStatus(fwk.Unschedulable, err.Error()), 0
	}
	bound, waiting := 0, []fwk.WaitingPod{}
	unscheduled := map[string]*v1.Pod{}
	for _, p := range m.active {
		switch {
		case p.UID == pod.UID:
		case p.Spec.NodeName != "":
			bound++
		default:
			if wp := g.handle.GetWaitingPod(p.UID); wp != nil {
				waiting = append(waiting, wp)
			} else {
				unscheduled[p.Namespace+"/"+p.Name] = p
			}
		}
	}
	timeout, err := podapi.Timeout(pod, DefaultPermitTimeout)
	if err != nil {
		g.warn(pod, "InvalidGroup", err.Error())
	}
	if bound+len(waiting)+1 >= m.size {
		pods := make([]types.UID, 0, len(waiting)+1)
		for _, wp := range waiting {
			pods = append(pods, wp.GetPod().UID)
		}
		now, release := g.gate.admit(key, append(pods, pod.UID), bound > 0)
		g.release(release)
		if !now {
			binding, queued := g.gate.sizes()
			return fwk.NewStatus(fwk.Wait, fmt.Sprintf("group %s: all %d members reserved; waiting for its turn to bind (%d groups binding, %d waiting)", key.Name, m.size, binding, queued)), timeout
		}
		for _, wp := range waiting {
			wp.Allow(Name)
		}
		return nil, 0
	}
	// Bring the rest of the group forward: they may sit in the unschedulable
	// pool from an earlier failed attempt.
	if len(unscheduled) > 0 {
		g.handle.Activate(g.log, unscheduled)
	}
	return fwk.NewStatus(fwk.Wait, fmt.Sprintf("group %s: %d of %d members reserved; waiting for the rest", key.Name, bound+len(waiting)+1, m.size)), timeout
}

// PostBind records the group's time to bind once its last member is bound.
func (g *Gang) PostBind(ctx context.Context, state fwk.CycleState, pod *v1.Pod, nodeName string) {
	key, ok := g.groupOf(pod)
	if !ok {
		return
	}
	g.release(g.gate.bound(key))
	m, err := g.members(key, pod)
	if err != nil {
		return
	}
	bound := 0
	first := pod.CreationTimestamp.Time
	for _, p := range m.active {
		if p.UID == pod.UID || p.Spec.NodeName != "" {
			bound++
		}
		if p.CreationTimestamp.Time.Before(first) {
			first = p.CreationTimestamp.Time
		}
	}
	if bound == m.size {
		groupBindDuration.Observe(time.Since(first).Seconds())
		g.mu.Lock()
		delete(g.firstSeen, key)
		g.mu.Unlock()
		g.markWaiting(key, false)
		g.log.V(2).Info("group bound", "group", key.String(), "members", m.size, "seconds", time.Since(first).Seconds())
	}
}

// EventsToRegister lists what can make a waiting group schedulable.
func (g *Gang) EventsToRegister(ctx context.Context) ([]fwk.ClusterEventWithHint, error) {
	events := []fwk.ClusterEventWithHint{
		// A new member, or a fixed annotation, may complete the group.
		{Event: fwk.ClusterEvent{Resource: fwk.Pod, ActionType: fwk.Add | fwk.Update}},
		// Capacity frees up when pods go away.
		{Event: fwk.ClusterEvent{Resource: fwk.Pod, ActionType: fwk.Delete}},
		// New or changed nodes may add capacity or a fitting domain.
		{Event: fwk.ClusterEvent{Resource: fwk.Node, ActionType: fwk.Add | fwk.UpdateNodeAllocatable | fwk.UpdateNodeLabel | fwk.UpdateNodeTaint}},
	}
	if g.podGroupLister() != nil {
		// A PodGroup appearing or changing minMember sizes its group.
		events = append(events, fwk.ClusterEventWithHint{Event: fwk.ClusterEvent{
			Resource: fwk.EventResource("podgroups." + spv1alpha1.SchemeGroupVersion.Version + "." + spv1alpha1.SchemeGroupVersion.Group), ActionType: fwk.Add | fwk.Update,
		}})
	}
	return events, nil
}

func (g *Gang) markWaiting(k podapi.Key, waiting bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if waiting {
		g.waiting[k] = true
	} else {
		delete(g.waiting, k)
	}
	groupsWaiting.Set(float64(len(g.waiting)))
}

// podDeleted forgets a group once its last pod is gone. A group deleted
// before it was fully bound (a job cancelled while it waited for capacity)
// would otherwise stay counted in muster_groups_waiting, and its first-seen
// time kept, for as long as the scheduler runs. The informer removes the
// pod from its index before it calls this.
func (g *Gang) podDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*v1.Pod)
	if !ok {
		return
	}
	k, ok := podapi.Of(pod)
	if !ok {
		return
	}
	if left, err := g.byGroup.ByIndex(groupIndex, k.String()); err != nil || len(left) > 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.firstSeen, k)
	delete(g.waiting, k)
	groupsWaiting.Set(float64(len(g.waiting)))
}

// rejectWaiting releases every member of group k waiting at Permit.
func (g *Gang) rejectWaiting(k podapi.Key, msg string) {
	g.handle.IterateOverWaitingPods(func(wp fwk.WaitingPod) {
		if wk, ok := g.groupOf(wp.GetPod()); ok && wk == k {
			wp.Reject(Name, msg)
		}
	})
	g.release(g.gate.drop(k))
}

// release lets through the groups the bind gate took out of its queue.
func (g *Gang) release(gs []gated) {
	for _, s := range g.gate.takeStale() {
		g.log.Info("group still binding; no longer holding other groups back", "group", s.String(), "after", staleBinding)
	}
	for _, gr := range gs {
		g.allow(gr.key, gr.pods)
	}
}

// allow lets group k's members waiting at Permit bind. The last member
// reserved may not be waiting yet (the framework registers it after its
// Permit returns); it is tried again shortly, while k is still binding.
func (g *Gang) allow(k podapi.Key, pods []types.UID) {
	var missing []types.UID
	for _, uid := range pods {
		if wp := g.handle.GetWaitingPod(uid); wp != nil {
			wp.Allow(Name)
		} else {
			missing = append(missing, uid)
		}
	}
	if len(missing) > 0 && g.gate.isBinding(k) {
		time.AfterFunc(5*time.Millisecond, func() { g.allow(k, missing) })
	}
}

// warn records a warning event on pod, once per distinct message.
func (g *Gang) warn(pod *v1.Pod, reason, msg string) {
	g.mu.Lock()
	key := string(pod.UID)
	if g.reported[key] == msg {
		g.mu.Unlock()
		return
	}
	if len(g.reported) > 100000 {
		g.reported = map[string]string{}
	}
	g.reported[key] = msg
	g.mu.Unlock()
	g.handle.EventRecorder().Eventf(pod, nil, v1.EventTypeWarning, reason, "Scheduling", "%s", msg)
}

func resultLabel(ok bool) string {
	if ok {
		return "fits"
	}
	return "waiting"
}

func containsPod(pods []*v1.Pod, pod *v1.Pod) bool {
	for _, p := range pods {
		if p.UID == pod.UID {
			return true
		}
	}
	return false
}

// snapshotNodes turns the scheduler's snapshot into what the fit check
// needs: each node and what it has left.
func snapshotNodes(nodes []fwk.NodeInfo) []fit.Node {
	out := make([]fit.Node, 0, len(nodes))
	for _, ni := range nodes {
		n := ni.Node()
		if n == nil {
			continue
		}
		alloc, req := ni.GetAllocatable(), ni.GetRequested()
		free := fit.Resources{
			v1.ResourceCPU:              alloc.GetMilliCPU() - req.GetMilliCPU(),
			v1.ResourceMemory:           alloc.GetMemory() - req.GetMemory(),
			v1.ResourceEphemeralStorage: alloc.GetEphemeralStorage() - req.GetEphemeralStorage(),
			v1.ResourcePods:             int64(alloc.GetAllowedPodNumber() - len(ni.GetPods())),
		}
		used := req.GetScalarResources()
		for name, v := range alloc.GetScalarResources() {
			free[name] = v - used[name]
		}
		out = append(out, fit.Node{Node: n, Free: free})
	}
	return out
}

// groupMembers is a group as the scheduler sees it now.
type groupMembers struct {
	size        int
	topologyKey string
	active      []*v1.Pod // not terminating, not finished; ordinal order
}

// members lists the group's pods and checks that they agree on its size.
func (g *Gang) members(k podapi.Key, pod *v1.Pod) (groupMembers, error) {
	var gm groupMembers
	seen := map[string]bool{}
	objs, err := g.byGroup.ByIndex(groupIndex, k.String())
	if err != nil {
		return gm, fmt.Errorf("list pods of group %s: %w", k, err)
	}
	for _, o := range objs {
		p, ok := o.(*v1.Pod)
		if !ok || seen[string(p.UID)] || p.DeletionTimestamp != nil || p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed {
			continue
		}
		seen[string(p.UID)] = true
		gm.active = append(gm.active, p)
	}
	if !seen[string(pod.UID)] {
		// The informer may lag the pod being scheduled.
		gm.active = append(gm.active, pod)
	}
	sort.Slice(gm.active, func(i, j int) bool {
		a, b := gm.active[i], gm.active[j]
		if oa, ob := podapi.Ordinal(a), podapi.Ordinal(b); oa != ob {
			return oa < ob
		}
		return a.Name < b.Name
	})
	size, present, err := podapi.Size(pod)
	if err != nil {
		return gm, fmt.Errorf("pod %s: %w", pod.Name, err)
	}
	if !present {
		if err := g.watchPodGroups(context.Background()); err != nil {
			g.log.Error(err, "watch PodGroups")
		}
		if l := g.podGroupLister(); l != nil {
			if pg, err := l.PodGroups(k.Namespace).Get(k.Name); err == nil && pg.Spec.MinMember >= 1 {
				size, present = int(pg.Spec.MinMember), true
			}
		}
	}
	if !present {
		return gm, fmt.Errorf("pod %s of group %s has no size: set annotation %s to the number of pods in the group (or create a PodGroup %s with minMember)", pod.Name, k.Name, podapi.AnnotationSize, k.Name)
	}
	for _, p := range gm.active {
		s, ok, err := podapi.Size(p)
		if err == nil && ok && s != size {
			return gm, fmt.Errorf("members of group %s disagree on %s: %d (pod %s) vs %d (pod %s); give every member the same size", k.Name, podapi.AnnotationSize, size, pod.Name, s, p.Name)
		}
	}
	gm.size = size
	gm.topologyKey = podapi.TopologyKey(pod)
	return gm, nil
}

// split separates members already placed (bound, or reserved and waiting
// at Permit) from those still to place, and finds the topology domain the
// placed ones fixed.
func (g *Gang) split(m groupMembers) (placed, unplaced []*v1.Pod, domain string) {
	nodeOf := map[string]string{}
	for _, p := range m.active {
		node := p.Spec.NodeName
		if node == "" {
			if wp := g.handle.GetWaitingPod(p.UID); wp != nil {
				node = wp.GetPod().Spec.NodeName
				if node == "" {
					node = "?"
				}
			}
		}
		if node == "" {
			unplaced = append(unplaced, p)
			continue
		}
		placed = append(placed, p)
		nodeOf[p.Name] = node
	}
	if m.topologyKey == "" {
		return placed, unplaced, ""
	}
	lister := g.handle.SnapshotSharedLister().NodeInfos()
	for _, n := range nodeOf {
		if ni, err := lister.Get(n); err == nil && ni.Node() != nil {
			if v, ok := ni.Node().Labels[m.topologyKey]; ok {
				return placed, unplaced, v
			}
		}
	}
	return placed, unplaced, ""
}
