// Package group reads which gang a pod belongs to, and how big the gang
// is, from the pod's labels and annotations.
package group

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
)

// The pod labels and annotations muster reads (README.md lists them).
const (
	LabelGroup            = "muster.dev/group"
	LabelPodGroup         = "scheduling.x-k8s.io/pod-group" // scheduler-plugins, LWS, Kubeflow, Kueue
	AnnotationSize        = "muster.dev/size"
	AnnotationTopologyKey = "muster.dev/topology-key"
	AnnotationTimeout     = "muster.dev/timeout"
	// AnnotationRankOrder "topology" asks for ranks that follow placement;
	// the scheduler then writes each member's domain (the value of the
	// group's topology key on its node) into AnnotationTopologyDomain
	// before binding it, where the agent reads it (downward API).
	AnnotationRankOrder      = "muster.dev/rank-order"
	AnnotationTopologyDomain = "muster.dev/topology-domain"
	RankOrderTopology        = "topology"
	// AnnotationRankTopologyKey is the node label rank-order topology
	// groups by; without it, the group's muster.dev/topology-key (which
	// then also keeps the group in one domain of that key).
	AnnotationRankTopologyKey = "muster.dev/rank-topology-key"
)

// RankTopologyKey is the node label whose domains rank-order topology
// keeps together ("" for none).
func RankTopologyKey(pod *v1.Pod) string {
	if k := strings.TrimSpace(pod.Annotations[AnnotationRankTopologyKey]); k != "" {
		return k
	}
	return TopologyKey(pod)
}

// LeaderWorkerSet (sigs.k8s.io/lws v0.7.0, api/leaderworkerset/v1) labels
// and annotations: every pod of one LWS group carries the set's name and
// the group's index, and the group size.
const (
	LabelLWSName       = "leaderworkerset.sigs.k8s.io/name"
	LabelLWSGroupIndex = "leaderworkerset.sigs.k8s.io/group-index"
	AnnotationLWSSize  = "leaderworkerset.sigs.k8s.io/size"
)

// Key identifies a group: group names are scoped by namespace.
type Key struct {
	Namespace string
	Name      string
}

func (k Key) String() string { return k.Namespace + "/" + k.Name }

// Source says where a pod's group name came from.
type Source int

const (
	SourceNone            Source = iota
	SourceLabel                  // muster.dev/group
	SourcePodGroupLabel          // scheduling.x-k8s.io/pod-group (size from its PodGroup's minMember)
	SourceSchedulingGroup        // spec.schedulingGroup.podGroupName (size from the scheduling.k8s.io PodGroup's gang minCount)
	SourceLeaderWorkerSet        // LWS name and group index: "<name>-<index>", the leader pod's name
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
	}
	return ""
}

// Name returns the pod's group name and where it came from, in this order:
// muster's label, scheduler-plugins' label, the upstream PodGroup the pod
// names, its LeaderWorkerSet group. "" and SourceNone for a pod of no group.
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
	return "", SourceNone
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
// for a LeaderWorkerSet pod from LWS's size annotation. present is false
// when neither is there (the size may then come from a PodGroup); err names
// the annotation and the fix.
func Size(pod *v1.Pod) (size int, present bool, err error) {
	key := AnnotationSize
	v, ok := pod.Annotations[key]
	if !ok {
		if _, src := Name(pod); src == SourceLeaderWorkerSet {
			key = AnnotationLWSSize
			v, ok = pod.Annotations[key]
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
// StatefulSet, LeaderWorkerSet and indexed Job labels, or -1.
func Ordinal(pod *v1.Pod) int {
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
	return -1
}
