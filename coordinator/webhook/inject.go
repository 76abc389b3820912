package webhook

import (
	"fmt"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/muster-dev/muster/scheduler-plugin/group"
)

// agentRun is what the main container's command starts with once wrapped.
var agentRun = []string{AgentPath, "run", "--"}

// inject adds the agent to pod for member m. Every step checks whether it
// was done already, so a pod that went through the webhook comes out
// unchanged: the apiserver calls the webhook again (reinvocationPolicy
// IfNeeded) when a later webhook changed the pod.
func (h *handler) inject(pod *corev1.Pod, m member) (warnings []string) {
	spec := &pod.Spec
	if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == VolumeName }) {
		spec.Volumes = append(spec.Volumes, corev1.Volume{
			Name:         VolumeName,
			VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}},
		})
	}
	if !slices.ContainsFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == InitContainerName }) {
		// First, so the agent is in place whatever the other init
		// containers do.
		spec.InitContainers = append([]corev1.Container{h.installer()}, spec.InitContainers...)
	}

	c := &spec.Containers[m.container]
	if !wrapped(c.Command) {
		// Kubernetes expands $(VAR) in command and args alike, so moving
		// the args into the command keeps their meaning.
		c.Command = slices.Concat(agentRun, c.Command, c.Args)
		c.Args = nil
	}
	addMount(c)
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == PortName }) {
		c.Ports = append(c.Ports, corev1.ContainerPort{Name: PortName, ContainerPort: int32(m.endpointPort), Protocol: corev1.ProtocolTCP})
	}
	for _, e := range h.env(m) {
		// A value the pod sets itself wins.
		if !slices.ContainsFunc(c.Env, func(have corev1.EnvVar) bool { return have.Name == e.Name }) {
			c.Env = append(c.Env, e)
		}
	}

	// The apiserver has defaulted an empty schedulerName to
	// default-scheduler before the webhook sees the pod.
	switch spec.SchedulerName {
	case h.cfg.SchedulerName:
	case "", corev1.DefaultSchedulerName:
		spec.SchedulerName = h.cfg.SchedulerName
	default:
		warnings = append(warnings, fmt.Sprintf(
			"spec.schedulerName is %q, left as is: without %s the pods of group %q are not scheduled all at once",
			spec.SchedulerName, h.cfg.SchedulerName, m.group))
	}
	if !slices.ContainsFunc(spec.ReadinessGates, func(g corev1.PodReadinessGate) bool { return g.ConditionType == ReadinessGate }) {
		spec.ReadinessGates = append(spec.ReadinessGates, corev1.PodReadinessGate{ConditionType: ReadinessGate})
	}
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	// The group as the webhook resolved it (from a PodGroup, a
	// LeaderWorkerSet, ...) is written down in muster's own terms, so the
	// scheduler, the coordinator and a reader of the pod see one answer.
	setIfAbsent(pod.Labels, group.LabelGroup, m.group)
	setIfAbsent(pod.Annotations, group.AnnotationSize, strconv.Itoa(m.size))
	if m.topologyKey != "" {
		setIfAbsent(pod.Annotations, group.AnnotationTopologyKey, m.topologyKey)
	}
	setIfAbsent(pod.Annotations, AnnotationInjected, "true")
	return warnings
}

func setIfAbsent(m map[string]string, k, v string) {
	if _, ok := m[k]; !ok {
		m[k] = v
	}
}

func wrapped(command []string) bool {
	return len(command) >= len(agentRun) && slices.Equal(command[:len(agentRun)], agentRun)
}

func addMount(c *corev1.Container) {
	if !slices.ContainsFunc(c.VolumeMounts, func(v corev1.VolumeMount) bool { return v.Name == VolumeName }) {
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: VolumeName, MountPath: BinDir})
	}
}

// installer is the init container that copies the agent into the shared
// volume: the main container's image knows nothing of muster.
func (h *handler) installer() corev1.Container {
	c := corev1.Container{
		Name:    InitContainerName,
		Image:   h.cfg.AgentImage,
		Command: []string{ImageAgentPath, "install", AgentPath},
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("10m"),
			corev1.ResourceMemory: resource.MustParse("32Mi"),
		}},
	}
	addMount(&c)
	return c
}

// env is what the agent reads in a pod (agent/config.go): the group's
// fields as literals, the pod's own from the downward API.
func (h *handler) env(m member) []corev1.EnvVar {
	lit := func(name, value string) corev1.EnvVar { return corev1.EnvVar{Name: name, Value: value} }
	ref := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path},
		}}
	}
	env := []corev1.EnvVar{
		lit("MUSTER_COORDINATOR", h.cfg.CoordinatorAddress),
		ref("MUSTER_NAMESPACE", "metadata.namespace"),
		lit("MUSTER_GROUP", m.group),
		lit("MUSTER_SIZE", strconv.Itoa(m.size)),
		// The pod's name, not a literal: pods made from generateName have
		// none yet when the webhook sees them.
		ref("MUSTER_MEMBER_ID", "metadata.name"),
		ref("MUSTER_ADDRESS", "status.podIP"),
		ref("MUSTER_NODE_NAME", "spec.nodeName"),
	}
	if m.ordinal >= 0 {
		env = append(env, lit("MUSTER_ORDINAL", strconv.Itoa(m.ordinal)))
	}
	env = append(env, lit("MUSTER_RUNTIME", m.runtime))
	if m.port != 0 {
		env = append(env, lit("MUSTER_PORT", strconv.Itoa(m.port)))
	}
	env = append(env, lit("MUSTER_ENDPOINT_PORT", strconv.Itoa(m.endpointPort)))
	if m.timeout != "" {
		env = append(env, lit("MUSTER_TIMEOUT", m.timeout))
	}
	if m.gpus > 0 {
		env = append(env, lit("MUSTER_GPUS_PER_NODE", strconv.FormatInt(m.gpus, 10)))
	}
	if m.rankOrder != "" {
		env = append(env, lit("MUSTER_RANK_ORDER", m.rankOrder))
	}
	if m.rankOrder == RankOrderTopology {
		// Written by muster's scheduler before the pod is bound, so it is
		// there when the kubelet resolves the env.
		env = append(env, ref("MUSTER_TOPOLOGY_DOMAIN", "metadata.annotations['"+AnnotationTopologyDomain+"']"))
	}
	return env
}
