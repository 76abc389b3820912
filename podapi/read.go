package podapi

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/muster-dev/muster/podapi/names"
)

// Member is what a pod says about its place in its group, defaulted and
// validated by Read.
type Member struct {
	Group        string
	Size         int
	Runtime      string
	Port         int // the runtime's serving port; 0 when not annotated
	EndpointPort int
	Timeout      string // "" when not annotated
	Ordinal      int    // -1 when the pod has no index
	// TopologyKey is the upstream PodGroup's topology key ("" for none).
	TopologyKey string
	RankOrder   string // "" when not annotated
	GPUs        int64  // nvidia.com/gpu limit of the wrapped container
	Container   int    // index in spec.containers of the container to wrap; -1 for none
}

// Gang is what muster reads from an upstream (scheduling.k8s.io) PodGroup.
type Gang struct {
	MinCount    int    // spec.schedulingPolicy.gang.minCount; 0 without a gang policy
	TopologyKey string // spec.schedulingConstraints.topology[0].key
}

// ReadOptions are what Read needs besides the pod.
type ReadOptions struct {
	// Runtimes are the presets muster.dev/runtime may name; empty: names.Runtimes.
	Runtimes []string
	// EndpointPort is the agent's endpoint port when the pod does not set
	// muster.dev/endpoint-port.
	EndpointPort int
	// SizeLookup, if set, sizes a group named by scheduler-plugins' label
	// from its PodGroup's minMember. Without it such pods need
	// muster.dev/size.
	SizeLookup func(ctx context.Context, namespace, group string) (size int, found bool, err error)
	// GangLookup, if set, reads the scheduling.k8s.io PodGroup a pod names
	// in spec.schedulingGroup. Without it such pods need muster.dev/size.
	GangLookup func(ctx context.Context, namespace, name string) (g Gang, found bool, err error)
}

// lookupTimeout keeps a PodGroup lookup well inside the apiserver's 10s
// webhook timeout, so a slow lookup is denied with a reason instead of the
// apiserver giving up without one.
const lookupTimeout = 5 * time.Second

var (
	labelsPath      = field.NewPath("metadata", "labels")
	annotationsPath = field.NewPath("metadata", "annotations")
	containersPath  = field.NewPath("spec", "containers")
	sgPath          = field.NewPath("spec", "schedulingGroup", "podGroupName")
)

// AnnotationPath is the field path of a pod annotation, for errors.
func AnnotationPath(key string) *field.Path { return annotationsPath.Key(key) }

// ContainersPath is spec.containers, for errors.
func ContainersPath() *field.Path { return containersPath }

// Read defaults, then validates, the group fields of a pod that asks for
// muster: its group's name and size (from muster's annotations or the
// workload that made it), its runtime, ports, timeout, rank order and
// topology, and the container the agent wraps. Each error names the field
// and the fix.
func Read(ctx context.Context, pod *corev1.Pod, o ReadOptions) (Member, field.ErrorList) {
	if len(o.Runtimes) == 0 {
		o.Runtimes = names.Runtimes
	}
	r := reader{pod: pod, o: o, m: Member{Runtime: names.DefaultRuntime, EndpointPort: o.EndpointPort, Ordinal: Ordinal(pod)}}
	r.name()
	r.size(ctx)
	r.gang(ctx)
	r.annotations()
	r.container()
	return r.m, r.errs
}

// reader holds one Read: each step reads some fields and adds its errors.
type reader struct {
	pod  *corev1.Pod
	o    ReadOptions
	m    Member
	errs field.ErrorList
	src  Source
	sg   string // the upstream PodGroup named in spec.schedulingGroup
}

func (r *reader) add(errs ...*field.Error) { r.errs = append(r.errs, errs...) }

// name reads the group's name and where it came from.
func (r *reader) name() {
	pod := r.pod
	name, src := Name(pod)
	switch isvc := pod.Labels[LabelKServeInferenceService]; {
	case name == "" && isvc != "":
		r.add(field.Required(labelsPath.Key(LabelKServeGeneration), fmt.Sprintf(
			"InferenceService %q is not multi-node (KServe labels the pods of one with predictor.workerSpec by generation): give it a workerSpec, or add label muster.dev/group: NAME and muster.dev/size to its predictor", isvc)))
	case name == "":
		r.add(field.Required(labelsPath.Key(LabelGroup),
			"add label muster.dev/group: NAME (the same on every pod of the group)"))
	default:
		for _, msg := range validation.IsValidLabelValue(name) {
			r.add(field.Invalid(sourcePath(src), name, msg))
		}
	}
	r.m.Group, r.src = name, src
	// A pod may name its group twice: muster's (or scheduler-plugins')
	// label and the upstream PodGroup in spec.schedulingGroup.
	r.sg = SchedulingGroup(pod)
	if r.sg != "" && name != "" && r.sg != name {
		r.add(field.Invalid(sgPath, r.sg, fmt.Sprintf(
			"the pod's %s is %q but spec.schedulingGroup.podGroupName is %q: one group has one name; make them equal or drop the label", src.Field(), name, r.sg)))
	}
}

// size reads the group's size: muster's annotation, else the workload's.
func (r *reader) size(ctx context.Context) {
	pod, ann := r.pod, r.pod.Annotations
	sizePath := annotationsPath.Key(AnnotationSize)
	_, hasSize := ann[AnnotationSize]
	switch lws, hasLWS := ann[AnnotationLWSSize]; {
	case hasSize:
		r.m.Size = r.positive(sizePath, ann[AnnotationSize])
	case r.src == SourceLeaderWorkerSet && hasLWS:
		// LeaderWorkerSet sets the group size on each of its pods.
		r.m.Size = r.positive(annotationsPath.Key(AnnotationLWSSize), lws)
	case r.src == SourceKServe:
		// KServe writes the pod count (head and workers) as RAY_NODE_COUNT
		// into both Deployments' containers.
		n, found, err := KServeSize(pod)
		switch {
		case err != nil:
			r.add(field.Invalid(containersPath, EnvKServeNodeCount, err.Error()))
		case !found:
			r.add(field.Required(sizePath, fmt.Sprintf(
				"KServe's pods say their count in env %s and this pod's containers do not; set it to the number of pods of InferenceService %q (head and workers)", EnvKServeNodeCount, pod.Labels[LabelKServeInferenceService])))
		default:
			r.m.Size = n
		}
	case r.src == SourcePodGroupLabel && len(r.errs) == 0: // no lookup for a bad name
		// The scheduler takes the size from the PodGroup's minMember; the
		// agent needs it too, so read it now.
		n, err := r.lookupSize(ctx, sizePath)
		if err != nil {
			r.add(err)
		}
		r.m.Size = n
	case r.src != SourcePodGroupLabel && r.sg == "":
		r.add(field.Required(sizePath,
			"set it to the number of pods in the group (only pods labelled "+LabelPodGroup+" or naming a PodGroup in spec.schedulingGroup may take it from their PodGroup)"))
	}
}

// gang reads the size and topology key of the upstream PodGroup the pod
// names, if any: its gang minCount is the size, and a pod that also says
// muster.dev/size must agree with it.
func (r *reader) gang(ctx context.Context) {
	if r.sg == "" || len(r.errs) > 0 {
		return
	}
	ann := r.pod.Annotations
	minCount, topo, err := r.lookupGang(ctx)
	_, hasSize := ann[AnnotationSize]
	switch {
	case err != nil:
		r.add(err)
	case hasSize && minCount != r.m.Size:
		r.add(field.Invalid(annotationsPath.Key(AnnotationSize), ann[AnnotationSize], fmt.Sprintf(
			"PodGroup %q (podgroups.scheduling.k8s.io) has gang minCount %d but %s is %d: one group has one size; make them equal or drop the annotation", r.sg, minCount, AnnotationSize, r.m.Size)))
	default:
		r.m.Size = minCount
	}
	r.m.TopologyKey = topo
}

// annotations reads the rest of muster's annotations.
func (r *reader) annotations() {
	pod, ann := r.pod, r.pod.Annotations
	if v, ok := ann[AnnotationOrdinal]; ok {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err != nil || n < 0 {
			r.add(field.Invalid(annotationsPath.Key(AnnotationOrdinal), v,
				"must be a whole number from 0: the member's rank hint (members with a hint take the lowest ranks, in its order)"))
		}
	}
	if v, ok := ann[AnnotationRuntime]; ok {
		r.m.Runtime = strings.TrimSpace(v)
		if !slices.Contains(r.o.Runtimes, r.m.Runtime) {
			r.add(field.NotSupported(annotationsPath.Key(AnnotationRuntime), v, r.o.Runtimes))
		}
	}
	if v, ok := ann[AnnotationPort]; ok {
		r.m.Port = r.port(annotationsPath.Key(AnnotationPort), v)
	}
	if v, ok := ann[AnnotationEndpointPort]; ok {
		r.m.EndpointPort = r.port(annotationsPath.Key(AnnotationEndpointPort), v)
	}
	if v, ok := ann[AnnotationTimeout]; ok {
		r.m.Timeout = strings.TrimSpace(v)
		if d, err := time.ParseDuration(r.m.Timeout); err != nil || d <= 0 {
			r.add(field.Invalid(annotationsPath.Key(AnnotationTimeout), v, "must be a positive duration such as 90s or 5m"))
		}
	}
	for _, key := range []string{AnnotationRankTopologyKey, AnnotationTopologyKey} {
		if v, ok := ann[key]; ok {
			for _, msg := range validation.IsQualifiedName(strings.TrimSpace(v)) {
				r.add(field.Invalid(annotationsPath.Key(key), v, "must be a node label key: "+msg))
			}
		}
	}
	if v, ok := ann[AnnotationTopologyKey]; ok && r.m.TopologyKey != "" && strings.TrimSpace(v) != r.m.TopologyKey {
		r.add(field.Invalid(annotationsPath.Key(AnnotationTopologyKey), v, fmt.Sprintf(
			"PodGroup %q asks for one %q domain: make them equal or drop the annotation", r.sg, r.m.TopologyKey)))
	}
	if v, ok := ann[AnnotationRankOrder]; ok {
		r.m.RankOrder = strings.TrimSpace(v)
		switch {
		case !slices.Contains(RankOrders, r.m.RankOrder):
			r.add(field.NotSupported(annotationsPath.Key(AnnotationRankOrder), v, RankOrders))
		case r.m.RankOrder == RankOrderTopology && r.m.TopologyKey == "" && RankTopologyKey(pod) == "":
			r.add(field.Required(annotationsPath.Key(AnnotationRankTopologyKey),
				"muster.dev/rank-order: topology ranks members by the domain of a node label: name it here (e.g. a rack label), or in muster.dev/topology-key to also keep the group in one domain"))
		}
	}
}

// container finds the container the agent wraps and reads its GPUs.
func (r *reader) container() {
	cs := r.pod.Spec.Containers
	if len(cs) == 0 {
		r.add(field.Required(containersPath, "the pod has no container to run the agent in"))
		r.m.Container = -1
		return
	}
	if v, ok := r.pod.Annotations[AnnotationContainer]; ok {
		r.m.Container = slices.IndexFunc(cs, func(c corev1.Container) bool { return c.Name == v })
		if r.m.Container < 0 {
			names := make([]string, len(cs))
			for i, c := range cs {
				names[i] = c.Name
			}
			r.add(field.Invalid(annotationsPath.Key(AnnotationContainer), v,
				"no container of that name; the pod's containers are "+strings.Join(names, ", ")))
			r.m.Container = -1
			return
		}
	}
	if q, ok := cs[r.m.Container].Resources.Limits[ResourceGPU]; ok {
		r.m.GPUs = q.Value()
	}
	if len(cs[r.m.Container].Command) == 0 {
		r.add(field.Required(containersPath.Index(r.m.Container).Child("command"),
			"muster wraps the container's command with its agent; set command (and args) explicitly"))
	}
}

// sourcePath is the field a group name was read from, for errors.
func sourcePath(src Source) *field.Path {
	switch src {
	case SourcePodGroupLabel:
		return labelsPath.Key(LabelPodGroup)
	case SourceSchedulingGroup:
		return sgPath
	case SourceLeaderWorkerSet:
		return labelsPath.Key(LabelLWSName)
	case SourceKServe:
		return labelsPath.Key(LabelKServeInferenceService)
	}
	return labelsPath.Key(LabelGroup)
}

// positive parses a group size.
func (r *reader) positive(path *field.Path, v string) int {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 {
		r.add(field.Invalid(path, v, "must be a positive whole number (the number of pods in the group)"))
	}
	return n
}

func (r *reader) port(path *field.Path, v string) int {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || len(validation.IsValidPortNum(n)) > 0 {
		r.add(field.Invalid(path, v, "must be a port number between 1 and 65535"))
		return 0
	}
	return n
}

// lookupGang reads the gang minCount and topology key of the
// scheduling.k8s.io PodGroup the pod names in spec.schedulingGroup.
func (r *reader) lookupGang(ctx context.Context) (int, string, *field.Error) {
	namespace, name := r.pod.Namespace, r.sg
	if r.o.GangLookup == nil {
		return 0, "", field.Required(annotationsPath.Key(AnnotationSize),
			"set it to the number of pods in the group (this webhook does not read scheduling.k8s.io PodGroups)")
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	g, found, err := r.o.GangLookup(ctx, namespace, name)
	switch {
	case err != nil:
		return 0, "", field.InternalError(sgPath, fmt.Errorf("look up PodGroup %q: %w", name, err))
	case !found:
		return 0, "", field.NotFound(sgPath, fmt.Sprintf(
			"no PodGroup %q (podgroups.scheduling.k8s.io) in namespace %q; create it before its pods", name, namespace))
	case g.MinCount < 1:
		return 0, "", field.Invalid(sgPath, name, fmt.Sprintf(
			"PodGroup %q has no gang policy (spec.schedulingPolicy.gang.minCount); muster needs the group's size: give it a gang policy, or set %s", name, AnnotationSize))
	}
	return g.MinCount, g.TopologyKey, nil
}

// lookupSize reads the minMember of the scheduler-plugins PodGroup the
// pod's label names.
func (r *reader) lookupSize(ctx context.Context, sizePath *field.Path) (int, *field.Error) {
	namespace, name := r.pod.Namespace, r.m.Group
	if r.o.SizeLookup == nil {
		return 0, field.Required(sizePath, "set it to the number of pods in the group (this webhook does not read PodGroups)")
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	n, found, err := r.o.SizeLookup(ctx, namespace, name)
	switch {
	case err != nil:
		return 0, field.InternalError(sizePath, fmt.Errorf("look up the size of group %q: %w", name, err))
	case !found:
		return 0, field.Required(sizePath, fmt.Sprintf(
			"no PodGroup %q (podgroups.scheduling.x-k8s.io) in namespace %q to take the size from; create it before its pods, or set muster.dev/size", name, namespace))
	case n < 1:
		return 0, field.Required(sizePath, fmt.Sprintf(
			"PodGroup %q has minMember %d; set its minMember, or muster.dev/size, to the number of pods in the group", name, n))
	}
	return n, nil
}
