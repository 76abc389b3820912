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

// The pod labels and annotations muster reads (see DESIGN.md).
const (
	LabelGroup            = "muster.dev/group"
	LabelPodGroup         = "scheduling.x-k8s.io/pod-group" // scheduler-plugins, LWS, Kubeflow, Kueue
	AnnotationSize        = "muster.dev/size"
	AnnotationTopologyKey = "muster.dev/topology-key"
	AnnotationTimeout     = "muster.dev/timeout"
)

// Key identifies a group: group names are scoped by namespace.
type Key struct {
	Namespace string
	Name      string
}

func (k Key) String() string { return k.Namespace + "/" + k.Name }

// Of returns the group pod belongs to; ok is false for a pod of no group.
// muster's own label wins over scheduler-plugins' label.
func Of(pod *v1.Pod) (Key, bool) {
	name := pod.Labels[LabelGroup]
	if name == "" {
		name = pod.Labels[LabelPodGroup]
	}
	if name == "" {
		return Key{}, false
	}
	return Key{Namespace: pod.Namespace, Name: name}, true
}

// Size reads the group size from the pod's muster.dev/size annotation.
// present is false when the annotation is absent (the size may then come
// from a PodGroup); err names the annotation and the fix.
func Size(pod *v1.Pod) (size int, present bool, err error) {
	v, ok := pod.Annotations[AnnotationSize]
	if !ok {
		return 0, false, nil
	}
	n, perr := strconv.Atoi(strings.TrimSpace(v))
	if perr != nil || n < 1 {
		return 0, true, fmt.Errorf("annotation %s=%q is not a positive whole number; set it to the number of pods in the group", AnnotationSize, v)
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
	for _, k := range []string{"apps.kubernetes.io/pod-index", "leaderworkerset.sigs.k8s.io/worker-index", "batch.kubernetes.io/job-completion-index"} {
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
