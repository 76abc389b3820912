package webhook

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/muster-dev/muster/scheduler-plugin/group"
)

// member is what a pod says about its place in its group, defaulted and
// then validated.
type member struct {
	group        string
	size         int
	runtime      string
	port         int // the runtime's serving port; 0 when not annotated
	endpointPort int
	timeout      string // "" when not annotated
	ordinal      int    // -1 when the pod has no index
	// topologyKey is the upstream PodGroup's topology key ("" for none).
	topologyKey string
	rankOrder   string // "" when not annotated
	gpus        int64  // nvidia.com/gpu limit of the wrapped container
	container   int    // index in spec.containers of the container to wrap
}

// sizeLookupTimeout keeps a PodGroup lookup well inside the apiserver's
// 10s webhook timeout, so a slow lookup is denied with a reason instead
// of the apiserver giving up without one.
const sizeLookupTimeout = 5 * time.Second

var (
	labelsPath      = field.NewPath("metadata", "labels")
	annotationsPath = field.NewPath("metadata", "annotations")
	containersPath  = field.NewPath("spec", "containers")
	sgPath          = field.NewPath("spec", "schedulingGroup", "podGroupName")
	volumesPath     = field.NewPath("spec", "volumes")
)

// read defaults, then validates, the group fields of an annotated pod.
func (h *handler) read(ctx context.Context, pod *corev1.Pod) (member, field.ErrorList) {
	m := member{
		runtime:      DefaultRuntime,
		endpointPort: h.cfg.EndpointPort,
		ordinal:      group.Ordinal(pod),
	}
	ann := pod.Annotations
	var errs field.ErrorList

	name, src := group.Name(pod)
	namePath := sourcePath(src)
	switch isvc := pod.Labels[group.LabelKServeInferenceService]; {
	case name == "" && isvc != "":
		errs = append(errs, field.Required(labelsPath.Key(group.LabelKServeGeneration), fmt.Sprintf(
			"InferenceService %q is not multi-node (KServe labels the pods of one with predictor.workerSpec by generation): give it a workerSpec, or add label muster.dev/group: NAME and muster.dev/size to its predictor", isvc)))
	case name == "":
		errs = append(errs, field.Required(labelsPath.Key(group.LabelGroup),
			"add label muster.dev/group: NAME (the same on every pod of the group)"))
	default:
		for _, msg := range validation.IsValidLabelValue(name) {
			errs = append(errs, field.Invalid(namePath, name, msg))
		}
	}
	m.group = name
	// A pod may name its group twice: muster's (or scheduler-plugins')
	// label and the upstream PodGroup in spec.schedulingGroup.
	sg := group.SchedulingGroup(pod)
	if sg != "" && name != "" && sg != name {
		errs = append(errs, field.Invalid(sgPath, sg, fmt.Sprintf(
			"the pod's %s is %q but spec.schedulingGroup.podGroupName is %q: one group has one name; make them equal or drop the label", src.Field(), name, sg)))
	}

	sizePath := annotationsPath.Key(group.AnnotationSize)
	lwsSizePath := annotationsPath.Key(group.AnnotationLWSSize)
	_, hasSize := ann[group.AnnotationSize]
	switch lws, hasLWS := ann[group.AnnotationLWSSize]; {
	case hasSize:
		m.size = positive(&errs, sizePath, ann[group.AnnotationSize])
	case src == group.SourceLeaderWorkerSet && hasLWS:
		// LeaderWorkerSet sets the group size on each of its pods.
		m.size = positive(&errs, lwsSizePath, lws)
	case src == group.SourceKServe:
		// KServe writes the pod count (head and workers) as RAY_NODE_COUNT
		// into both Deployments' containers.
		n, found, err := group.KServeSize(pod)
		switch {
		case err != nil:
			errs = append(errs, field.Invalid(containersPath, group.EnvKServeNodeCount, err.Error()))
		case !found:
			errs = append(errs, field.Required(sizePath, fmt.Sprintf(
				"KServe's pods say their count in env %s and this pod's containers do not; set it to the number of pods of InferenceService %q (head and workers)", group.EnvKServeNodeCount, pod.Labels[group.LabelKServeInferenceService])))
		default:
			m.size = n
		}
	case src == group.SourcePodGroupLabel && len(errs) == 0: // no lookup for a bad name
		// The scheduler takes the size from the PodGroup's minMember; the
		// agent needs it too, so read it now.
		n, err := h.lookupSize(ctx, sizePath, pod.Namespace, name)
		if err != nil {
			errs = append(errs, err)
		}
		m.size = n
	case src != group.SourcePodGroupLabel && sg == "":
		errs = append(errs, field.Required(sizePath,
			"set it to the number of pods in the group (only pods labelled "+group.LabelPodGroup+" or naming a PodGroup in spec.schedulingGroup may take it from their PodGroup)"))
	}
	if sg != "" && len(errs) == 0 {
		// The upstream PodGroup's gang minCount is the size; a pod that
		// also says muster.dev/size must agree with it.
		minCount, topo, err := h.lookupGang(ctx, pod.Namespace, sg)
		switch {
		case err != nil:
			errs = append(errs, err)
		case hasSize && minCount != m.size:
			errs = append(errs, field.Invalid(sizePath, ann[group.AnnotationSize], fmt.Sprintf(
				"PodGroup %q (podgroups.scheduling.k8s.io) has gang minCount %d but %s is %d: one group has one size; make them equal or drop the annotation", sg, minCount, group.AnnotationSize, m.size)))
		default:
			m.size = minCount
		}
		m.topologyKey = topo
	}

	if v, ok := ann[group.AnnotationOrdinal]; ok {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err != nil || n < 0 {
			errs = append(errs, field.Invalid(annotationsPath.Key(group.AnnotationOrdinal), v,
				"must be a whole number from 0: the member's rank hint (members with a hint take the lowest ranks, in its order)"))
		}
	}
	if v, ok := ann[AnnotationRuntime]; ok {
		m.runtime = strings.TrimSpace(v)
		if !slices.Contains(h.cfg.Runtimes, m.runtime) {
			errs = append(errs, field.NotSupported(annotationsPath.Key(AnnotationRuntime), v, h.cfg.Runtimes))
		}
	}
	if v, ok := ann[AnnotationPort]; ok {
		m.port = port(&errs, annotationsPath.Key(AnnotationPort), v)
	}
	endpointPath := annotationsPath.Key(AnnotationEndpointPort)
	if v, ok := ann[AnnotationEndpointPort]; ok {
		m.endpointPort = port(&errs, endpointPath, v)
	}
	if v, ok := ann[group.AnnotationTimeout]; ok {
		m.timeout = strings.TrimSpace(v)
		if d, err := time.ParseDuration(m.timeout); err != nil || d <= 0 {
			errs = append(errs, field.Invalid(annotationsPath.Key(group.AnnotationTimeout), v, "must be a positive duration such as 90s or 5m"))
		}
	}
	if v, ok := ann[group.AnnotationRankTopologyKey]; ok {
		for _, msg := range validation.IsQualifiedName(strings.TrimSpace(v)) {
			errs = append(errs, field.Invalid(annotationsPath.Key(group.AnnotationRankTopologyKey), v, "must be a node label key: "+msg))
		}
	}
	if v, ok := ann[group.AnnotationTopologyKey]; ok {
		for _, msg := range validation.IsQualifiedName(strings.TrimSpace(v)) {
			errs = append(errs, field.Invalid(annotationsPath.Key(group.AnnotationTopologyKey), v, "must be a node label key: "+msg))
		}
	}
	if v, ok := ann[group.AnnotationTopologyKey]; ok && m.topologyKey != "" && strings.TrimSpace(v) != m.topologyKey {
		errs = append(errs, field.Invalid(annotationsPath.Key(group.AnnotationTopologyKey), v, fmt.Sprintf(
			"PodGroup %q asks for one %q domain: make them equal or drop the annotation", group.SchedulingGroup(pod), m.topologyKey)))
	}
	if v, ok := ann[AnnotationRankOrder]; ok {
		m.rankOrder = strings.TrimSpace(v)
		switch {
		case !slices.Contains(RankOrders, m.rankOrder):
			errs = append(errs, field.NotSupported(annotationsPath.Key(AnnotationRankOrder), v, RankOrders))
		case m.rankOrder == RankOrderTopology && m.topologyKey == "" && group.RankTopologyKey(pod) == "":
			errs = append(errs, field.Required(annotationsPath.Key(group.AnnotationRankTopologyKey),
				"muster.dev/rank-order: topology ranks members by the domain of a node label: name it here (e.g. a rack label), or in muster.dev/topology-key to also keep the group in one domain"))
		}
	}

	cs := pod.Spec.Containers
	if len(cs) == 0 {
		return m, append(errs, field.Required(containersPath, "the pod has no container to run the agent in"))
	}
	if v, ok := ann[AnnotationContainer]; ok {
		m.container = slices.IndexFunc(cs, func(c corev1.Container) bool { return c.Name == v })
		if m.container < 0 {
			names := make([]string, len(cs))
			for i, c := range cs {
				names[i] = c.Name
			}
			return m, append(errs, field.Invalid(annotationsPath.Key(AnnotationContainer), v,
				"no container of that name; the pod's containers are "+strings.Join(names, ", ")))
		}
	}
	if q, ok := cs[m.container].Resources.Limits[ResourceGPU]; ok {
		m.gpus = q.Value()
	}
	if len(cs[m.container].Command) == 0 {
		errs = append(errs, field.Required(containersPath.Index(m.container).Child("command"),
			"muster wraps the container's command with its agent; set command (and args) explicitly"))
	}
	errs = append(errs, portConflicts(pod, m, endpointPath)...)
	return m, append(errs, h.tokenConflicts(pod, m)...)
}

// sourcePath is the field a group name was read from, for errors.
func sourcePath(src group.Source) *field.Path {
	switch src {
	case group.SourcePodGroupLabel:
		return labelsPath.Key(group.LabelPodGroup)
	case group.SourceSchedulingGroup:
		return sgPath
	case group.SourceLeaderWorkerSet:
		return labelsPath.Key(group.LabelLWSName)
	case group.SourceKServe:
		return labelsPath.Key(group.LabelKServeInferenceService)
	}
	return labelsPath.Key(group.LabelGroup)
}

// positive parses a group size.
func positive(errs *field.ErrorList, path *field.Path, v string) int {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 {
		*errs = append(*errs, field.Invalid(path, v, "must be a positive whole number (the number of pods in the group)"))
	}
	return n
}

// lookupGang reads the gang minCount and topology key of the
// scheduling.k8s.io PodGroup a pod names in spec.schedulingGroup.
func (h *handler) lookupGang(ctx context.Context, namespace, name string) (int, string, *field.Error) {
	if h.cfg.GangLookup == nil {
		return 0, "", field.Required(annotationsPath.Key(group.AnnotationSize),
			"set it to the number of pods in the group (this webhook does not read scheduling.k8s.io PodGroups)")
	}
	ctx, cancel := context.WithTimeout(ctx, sizeLookupTimeout)
	defer cancel()
	g, found, err := h.cfg.GangLookup(ctx, namespace, name)
	switch {
	case err != nil:
		return 0, "", field.InternalError(sgPath, fmt.Errorf("look up PodGroup %q: %w", name, err))
	case !found:
		return 0, "", field.NotFound(sgPath, fmt.Sprintf(
			"no PodGroup %q (podgroups.scheduling.k8s.io) in namespace %q; create it before its pods", name, namespace))
	case g.MinCount < 1:
		return 0, "", field.Invalid(sgPath, name, fmt.Sprintf(
			"PodGroup %q has no gang policy (spec.schedulingPolicy.gang.minCount); muster needs the group's size: give it a gang policy, or set %s", name, group.AnnotationSize))
	}
	return g.MinCount, g.TopologyKey, nil
}

func (h *handler) lookupSize(ctx context.Context, sizePath *field.Path, namespace, name string) (int, *field.Error) {
	if h.cfg.SizeLookup == nil {
		return 0, field.Required(sizePath, "set it to the number of pods in the group (this webhook does not read PodGroups)")
	}
	ctx, cancel := context.WithTimeout(ctx, sizeLookupTimeout)
	defer cancel()
	n, found, err := h.cfg.SizeLookup(ctx, namespace, name)
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

func port(errs *field.ErrorList, path *field.Path, v string) int {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || len(validation.IsValidPortNum(n)) > 0 {
		*errs = append(*errs, field.Invalid(path, v, "must be a port number between 1 and 65535"))
		return 0
	}
	return n
}

// portConflicts finds ports that would stop the agent from serving its
// endpoint: the runtime's port, or a port a container of the pod declares
// (containers share the pod's network namespace).
func portConflicts(pod *corev1.Pod, m member, endpointPath *field.Path) field.ErrorList {
	if m.endpointPort == 0 {
		return nil // already reported as invalid
	}
	var errs field.ErrorList
	if m.port == m.endpointPort {
		errs = append(errs, field.Invalid(endpointPath, int64(m.endpointPort), fmt.Sprintf(
			"the agent's endpoint and the runtime (%s) cannot share a port; set %s to another port", AnnotationPort, AnnotationEndpointPort)))
	}
	for i, c := range pod.Spec.Containers {
		for j, p := range c.Ports {
			ours := i == m.container && p.Name == PortName
			switch {
			case ours && p.ContainerPort != int32(m.endpointPort):
				errs = append(errs, field.Invalid(containersPath.Index(i).Child("ports").Index(j).Child("name"), p.Name, fmt.Sprintf(
					"the port name %s is reserved for the agent's endpoint (port %d); rename this port", PortName, m.endpointPort)))
			case !ours && p.ContainerPort == int32(m.endpointPort) && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP):
				errs = append(errs, field.Invalid(endpointPath, int64(m.endpointPort), fmt.Sprintf(
					"%s already uses this port; set %s to a free port", containersPath.Index(i).Child("ports").Index(j), AnnotationEndpointPort)))
			}
		}
	}
	return errs
}

// tokenConflicts finds what would take the place of the agent's token: a
// volume of the pod's own named muster-token, or a mount of the agent's
// container at or under TokenDir. The webhook denies these rather than
// overwrite them: the pod's volume may serve other containers, and a
// mount there would hide the token, so the pod would fail later, far from
// the cause. A volume exactly like the webhook's is its own (a
// reinvocation, or a pod the webhook made before) and kept.
func (h *handler) tokenConflicts(pod *corev1.Pod, m member) field.ErrorList {
	var errs field.ErrorList
	for i, v := range pod.Spec.Volumes {
		if v.Name == TokenVolumeName && !h.isOurTokenVolume(v) {
			errs = append(errs, field.Invalid(volumesPath.Index(i).Child("name"), v.Name, fmt.Sprintf(
				"the volume name %s is reserved for the agent's service-account token, which the webhook adds (projected serviceAccountToken, audience %q, expirationSeconds %d, path %s); rename this volume",
				TokenVolumeName, h.cfg.TokenAudience, int64(h.cfg.TokenExpiration/time.Second), TokenPath)))
		}
	}
	for j, vm := range pod.Spec.Containers[m.container].VolumeMounts {
		if p := path.Clean(vm.MountPath); (p == TokenDir || strings.HasPrefix(p, TokenDir+"/")) && !isTokenMount(vm) {
			errs = append(errs, field.Invalid(containersPath.Index(m.container).Child("volumeMounts").Index(j).Child("mountPath"), vm.MountPath, fmt.Sprintf(
				"%s is where the agent reads its token (%s); mount this volume elsewhere", TokenDir, TokenFile)))
		}
	}
	return errs
}
