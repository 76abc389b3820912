package webhook

import (
	"fmt"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/podapi/names"
)

// agentRun is what the main container's command starts with once wrapped.
var agentRun = []string{AgentPath, "run", "--"}

// inject adds the agent to pod for member m. Every step checks whether it
// was done already, so a pod that went through the webhook comes out
// unchanged: the apiserver calls the webhook again (reinvocationPolicy
// IfNeeded) when a later webhook changed the pod.
func (h *handler) inject(pod *corev1.Pod, m podapi.Member) (warnings []string) {
	spec := &pod.Spec
	if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == VolumeName }) {
		spec.Volumes = append(spec.Volumes, corev1.Volume{
			Name:         VolumeName,
			VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}},
		})
	}
	// read denied any other volume of this name, so one found is ours.
	if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == TokenVolumeName }) {
		// Also when spec.automountServiceAccountToken is false: that field
		// only keeps out the kube-api-access volume, a token for the
		// Kubernetes API. This volume is the webhook's own, which the
		// kubelet fills whatever that field says, and its token is good
		// for nothing but the coordinator (its audience), bound to the pod
		// and short-lived: a pod that refuses the API's token still gets
		// no access to the API.
		spec.Volumes = append(spec.Volumes, h.tokenVolume())
	}
	if !slices.ContainsFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == InitContainerName }) {
		// First, so the agent is in place whatever the other init
		// containers do.
		spec.InitContainers = append([]corev1.Container{h.installer()}, spec.InitContainers...)
	}

	shareWorkloadEnv(spec, m.Container)

	c := &spec.Containers[m.Container]
	if !wrapped(c.Command) {
		// Kubernetes expands $(VAR) in command and args alike, so moving
		// the args into the command keeps their meaning.
		c.Command = slices.Concat(agentRun, c.Command, c.Args)
		c.Args = nil
	}
	addMount(c)
	if !slices.ContainsFunc(c.VolumeMounts, isTokenMount) {
		c.VolumeMounts = append(c.VolumeMounts, tokenMount())
	}
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == PortName }) {
		c.Ports = append(c.Ports, corev1.ContainerPort{Name: PortName, ContainerPort: int32(m.EndpointPort), Protocol: corev1.ProtocolTCP})
	}
	for _, e := range h.env(m) {
		switch {
		case identityEnv[e.Name]:
			// Who the member is, and how it proves it, is never the pod's
			// to say. env is enough to win: the kubelet lets env override
			// envFrom, whatever its prefix.
			setEnv(c, e)
		case !slices.ContainsFunc(c.Env, func(have corev1.EnvVar) bool { return have.Name == e.Name }):
			// Otherwise a value the pod sets itself wins (its own
			// coordinator address, say).
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
			spec.SchedulerName, h.cfg.SchedulerName, m.Group))
	}
	if !slices.ContainsFunc(spec.ReadinessGates, func(g corev1.PodReadinessGate) bool { return g.ConditionType == podapi.ConditionGroupReady }) {
		spec.ReadinessGates = append(spec.ReadinessGates, corev1.PodReadinessGate{ConditionType: podapi.ConditionGroupReady})
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
	setIfAbsent(pod.Labels, podapi.LabelGroup, m.Group)
	setIfAbsent(pod.Annotations, podapi.AnnotationSize, strconv.Itoa(m.Size))
	if m.TopologyKey != "" {
		setIfAbsent(pod.Annotations, podapi.AnnotationTopologyKey, m.TopologyKey)
	}
	setIfAbsent(pod.Annotations, podapi.AnnotationInjected, "true")
	return warnings
}

// identityEnv are the env vars inject always sets to its own values,
// replacing the pod's: the member's identity from the downward API (a pod
// that said MUSTER_MEMBER_ID=victim would otherwise speak for another
// pod), the token that proves it, and the CA that checks the coordinator.
// The coordinator trusts only the token; overwriting the rest keeps an
// honest agent from claiming an identity its token does not back.
var identityEnv = map[string]bool{
	names.EnvNamespace:      true,
	names.EnvMemberID:       true,
	names.EnvAddress:        true,
	names.EnvNodeName:       true,
	names.EnvTopologyDomain: true,
	names.EnvTokenFile:      true,
	names.EnvCoordinatorCA:  true,
}

// setEnv makes e the container's only env var of its name. It takes the
// place of the first one of that name, so that $(NAME) in the entries
// after it still expands to it; later ones go, since the kubelet takes the
// last of duplicate names.
func setEnv(c *corev1.Container, e corev1.EnvVar) {
	named := func(have corev1.EnvVar) bool { return have.Name == e.Name }
	i := slices.IndexFunc(c.Env, named)
	if i < 0 {
		c.Env = append(c.Env, e)
		return
	}
	c.Env[i] = e
	c.Env = append(c.Env[:i+1], slices.DeleteFunc(c.Env[i+1:], named)...)
}

// tokenVolume is the projected volume with the agent's token.
func (h *handler) tokenVolume() corev1.Volume {
	seconds := int64(h.cfg.TokenExpiration / time.Second)
	return corev1.Volume{Name: TokenVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
			Audience: h.cfg.TokenAudience, ExpirationSeconds: &seconds, Path: TokenPath,
		}}},
	}}}
}

// isOurTokenVolume tells whether v is the volume tokenVolume makes, as the
// apiserver stores it (with defaults such as defaultMode filled in).
func (h *handler) isOurTokenVolume(v corev1.Volume) bool {
	p := v.Projected
	if v.Name != TokenVolumeName || p == nil || len(p.Sources) != 1 || p.Sources[0].ServiceAccountToken == nil {
		return false
	}
	want := h.tokenVolume().Projected.Sources[0]
	return equality.Semantic.DeepEqual(p.Sources[0], want)
}

func tokenMount() corev1.VolumeMount {
	return corev1.VolumeMount{Name: TokenVolumeName, MountPath: TokenDir, ReadOnly: true}
}

// isTokenMount tells whether v mounts the token where the agent reads it.
// Read-only or not: the kubelet mounts projected volumes read-only anyway.
func isTokenMount(v corev1.VolumeMount) bool {
	return v.Name == TokenVolumeName && v.MountPath == TokenDir
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

// workloadEnv are env vars a workload's own pod webhook gives every
// container and init container of a pod, on create and again on every
// update: LeaderWorkerSet's (sigs.k8s.io/lws v0.7.0,
// pkg/utils/pod.AddLWSVariables, reinvocationPolicy Never). Its create
// call comes before muster's (configurations run in name order), so the
// agent's init container misses them, and its next call, on any update of
// the pod (the garbage collector taking off the foregroundDeletion
// finalizer when LWS recreates a group), would add them to a pod's spec,
// which the apiserver forbids: the update fails and the pod never goes.
var workloadEnv = map[string]bool{"LWS_LEADER_ADDRESS": true, "LWS_GROUP_SIZE": true, "LWS_WORKER_INDEX": true}

// shareWorkloadEnv gives the agent's init container the workloadEnv vars
// the wrapped container has, so a workload's webhook finds nothing to add.
func shareWorkloadEnv(spec *corev1.PodSpec, wrapped int) {
	i := slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == InitContainerName })
	if i < 0 {
		return
	}
	init := &spec.InitContainers[i]
	for _, e := range spec.Containers[wrapped].Env {
		if workloadEnv[e.Name] && !slices.ContainsFunc(init.Env, func(have corev1.EnvVar) bool { return have.Name == e.Name }) {
			init.Env = append(init.Env, e)
		}
	}
}

// env is what the agent reads in a pod (agent/config.go): the group's
// fields as literals, the pod's own from the downward API, and where its
// credentials are. inject overwrites those in identityEnv.
func (h *handler) env(m podapi.Member) []corev1.EnvVar {
	lit := func(name, value string) corev1.EnvVar { return corev1.EnvVar{Name: name, Value: value} }
	ref := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path},
		}}
	}
	env := []corev1.EnvVar{lit(names.EnvCoordinator, h.cfg.CoordinatorAddress)}
	if len(h.cfg.CoordinatorCA) > 0 {
		env = append(env, lit(names.EnvCoordinatorCA, string(h.cfg.CoordinatorCA)))
	}
	env = append(env,
		lit(names.EnvTokenFile, TokenFile),
		ref(names.EnvNamespace, "metadata.namespace"),
		lit(names.EnvGroup, m.Group),
		lit(names.EnvSize, strconv.Itoa(m.Size)),
		// The pod's name, not a literal: pods made from generateName have
		// none yet when the webhook sees them.
		ref(names.EnvMemberID, "metadata.name"),
		ref(names.EnvAddress, "status.podIP"),
		ref(names.EnvNodeName, "spec.nodeName"),
	)
	if m.Ordinal >= 0 {
		env = append(env, lit(names.EnvOrdinal, strconv.Itoa(m.Ordinal)))
	}
	env = append(env, lit(names.EnvRuntime, m.Runtime))
	if m.Port != 0 {
		env = append(env, lit(names.EnvPort, strconv.Itoa(m.Port)))
	}
	env = append(env, lit(names.EnvEndpointPort, strconv.Itoa(m.EndpointPort)))
	if m.Timeout != "" {
		env = append(env, lit(names.EnvTimeout, m.Timeout))
	}
	if m.GPUs > 0 {
		env = append(env, lit(names.EnvGPUsPerNode, strconv.FormatInt(m.GPUs, 10)))
	}
	if m.RankOrder != "" {
		env = append(env, lit(names.EnvRankOrder, m.RankOrder))
	}
	if m.RankOrder == podapi.RankOrderTopology {
		// Written by muster's scheduler before the pod is bound, so it is
		// there when the kubelet resolves the env.
		env = append(env, ref(names.EnvTopologyDomain, "metadata.annotations['"+podapi.AnnotationTopologyDomain+"']"))
	}
	return env
}
