package podapi

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
)

// RankTopologyKey is the node label whose domains rank-order topology
// keeps together ("" for none).
func RankTopologyKey(pod *v1.Pod) string {
	if k := strings.TrimSpace(pod.Annotations[AnnotationRankTopologyKey]); k != "" {
		return k
	}
	return TopologyKey(pod)
}

// Source says where a pod's group name came from.
type Source int

const (
	SourceNone            Source = iota
	SourceLabel                  // muster.dev/group
	SourcePodGroupLabel          // scheduling.x-k8s.io/pod-group (size from its PodGroup's minMember)
	SourceSchedulingGroup        // spec.schedulingGroup.podGroupName (size from the scheduling.k8s.io PodGroup's gang minCount)
	SourceLeaderWorkerSet        // LWS name and group index: "<name>-<index>", the leader pod's name
	SourceKServe                 // a multi-node InferenceService and its generation: "<isvc>-<generation>"
)

// Field is where the name was read, for messages.
func (s Source) Field() string {
	switch s {
	case SourceLabel:
		return "metadata.labels[" + LabelGroup + "]"
	case SourcePodGroupLabel:
		return "metadata.labels[" + LabelPodGroup + "]"
	case SourceSchedulingGroup:
		return "spec.schedulingGroup.podGroupName"
	case SourceLeaderWorkerSet:
		return "metadata.labels[" + LabelLWSName + "]-[" + LabelLWSGroupIndex + "]"
	case SourceKServe:
		return "metadata.labels[" + LabelKServeInferenceService + "]-[" + LabelKServeGeneration + "]"
	}
	return ""
}

// Name returns the pod's group name and where it came from, in this order:
// muster's label, scheduler-plugins' label, the upstream PodGroup the pod
// names, its LeaderWorkerSet group, its KServe InferenceService (only for
// pods annotated muster.dev/inject: "true"). "" and SourceNone for a pod of
// no group.
func Name(pod *v1.Pod) (string, Source) {
	if v := pod.Labels[LabelGroup]; v != "" {
		return v, SourceLabel
	}
	if v := pod.Labels[LabelPodGroup]; v != "" {
		return v, SourcePodGroupLabel
	}
	if v := SchedulingGroup(pod); v != "" {
		return v, SourceSchedulingGroup
	}
	if set, idx := pod.Labels[LabelLWSName], pod.Labels[LabelLWSGroupIndex]; set != "" && idx != "" {
		return set + "-" + idx, SourceLeaderWorkerSet
	}
	if isvc, gen, ok := kserve(pod); ok {
		// One group per generation: a rollout's new pods form a group of
		// their own while the old generation's still serve.
		return isvc + "-" + gen, SourceKServe
	}
	return "", SourceNone
}

// kserve reads the InferenceService and generation of a multi-node KServe
// predictor pod that asked for muster.
func kserve(pod *v1.Pod) (isvc, gen string, ok bool) {
	l := pod.Labels
	isvc, gen = l[LabelKServeInferenceService], l[LabelKServeGeneration]
	if isvc == "" || gen == "" || l[LabelKServeComponent] != "predictor" || pod.Annotations[AnnotationInject] != "true" {
		return "", "", false
	}
	return isvc, gen, true
}

// KServeHead says whether pod is the head of a multi-node InferenceService
// (a pod of its <isvc>-predictor Deployment, not of -predictor-worker).
func KServeHead(pod *v1.Pod) bool {
	isvc, _, ok := kserve(pod)
	return ok && pod.Labels[LabelKServeApp] == "isvc."+isvc+"-predictor"
}

// KServeSize is the pod count KServe gives a multi-node InferenceService
// (RAY_NODE_COUNT, which it writes into the head's and the workers'
// containers); found is false when no container says it.
func KServeSize(pod *v1.Pod) (size int, found bool, err error) {
	for _, c := range pod.Spec.Containers {
		for _, e := range c.Env {
			if e.Name != EnvKServeNodeCount || e.ValueFrom != nil {
				continue
			}
			n, perr := strconv.Atoi(strings.TrimSpace(e.Value))
			if perr != nil || n < 1 {
				return 0, true, fmt.Errorf("container %s: env %s=%q is not a positive whole number; set annotation %s to the number of pods in the group", c.Name, EnvKServeNodeCount, e.Value, AnnotationSize)
			}
			return n, true, nil
		}
	}
	return 0, false, nil
}

// SchedulingGroup is the scheduling.k8s.io PodGroup the pod names in
// spec.schedulingGroup (Kubernetes 1.37, feature gate GenericWorkload), or "".
func SchedulingGroup(pod *v1.Pod) string {
	if sg := pod.Spec.SchedulingGroup; sg != nil && sg.PodGroupName != nil {
		return *sg.PodGroupName
	}
	return ""
}

// Of returns the group pod belongs to; ok is false for a pod of no group.
func Of(pod *v1.Pod) (Key, bool) {
	name, _ := Name(pod)
	if name == "" {
		return Key{}, false
	}
	return Key{Namespace: pod.Namespace, Name: name}, true
}

// Size reads the group size from the pod's muster.dev/size annotation, or
// for a LeaderWorkerSet pod from LWS's size annotation, or for a KServe pod
// from KServe's RAY_NODE_COUNT. present is false when none is there (the
// size may then come from a PodGroup); err names the field and the fix.
func Size(pod *v1.Pod) (size int, present bool, err error) {
	key := AnnotationSize
	v, ok := pod.Annotations[key]
	if !ok {
		switch _, src := Name(pod); src {
		case SourceLeaderWorkerSet:
			key = AnnotationLWSSize
			v, ok = pod.Annotations[key]
		case SourceKServe:
			return KServeSize(pod)
		}
	}
	if !ok {
		return 0, false, nil
	}
	n, perr := strconv.Atoi(strings.TrimSpace(v))
	if perr != nil || n < 1 {
		return 0, true, fmt.Errorf("annotation %s=%q is not a positive whole number; set it to the number of pods in the group", key, v)
	}
	return n, true, nil
}

// TopologyKey is the node label whose value the whole group must share
// ("" for none).
func TopologyKey(pod *v1.Pod) string {
	return strings.TrimSpace(pod.Annotations[AnnotationTopologyKey])
}

// Timeout is how long a group's members may wait for each other at Permit.
func Timeout(pod *v1.Pod, def time.Duration) (time.Duration, error) {
	v, ok := pod.Annotations[AnnotationTimeout]
	if !ok {
		return def, nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d <= 0 {
		return def, fmt.Errorf("annotation %s=%q is not a positive duration such as 90s or 5m", AnnotationTimeout, v)
	}
	return d, nil
}

// Ordinal is the pod's index in its workload, for ordering members: the
// muster.dev/ordinal hint, the StatefulSet, LeaderWorkerSet and indexed Job
// labels, 0 for a KServe head, or -1.
func Ordinal(pod *v1.Pod) int {
	if v, ok := pod.Annotations[AnnotationOrdinal]; ok {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
			return n
		}
	}
	// LWS first: a LeaderWorkerSet's leaders are pods of a StatefulSet, so
	// the leader of group i carries pod-index i, but worker-index 0.
	for _, k := range []string{"leaderworkerset.sigs.k8s.io/worker-index", "apps.kubernetes.io/pod-index", "batch.kubernetes.io/job-completion-index"} {
		if v, ok := pod.Labels[k]; ok {
			if n, err := strconv.Atoi(v); err == nil {
				return n
			}
		}
		if v, ok := pod.Annotations[k]; ok {
			if n, err := strconv.Atoi(v); err == nil {
				return n
			}
		}
	}
	if KServeHead(pod) {
		return 0
	}
	return -1
}
