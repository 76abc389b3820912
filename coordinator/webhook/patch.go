package webhook

import (
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// operation is one RFC 6902 JSON patch operation.
type operation struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// diff is the JSON patch from old to new over the fields inject touches.
//
// It compares typed pods, field by field, rather than the request's JSON
// with the re-encoded pod: that would also "remove" any field the
// apiserver knows and this build's k8s.io/api does not. Lists grown at
// either end get "add" operations for the new items only, so the patch
// never rewrites what other webhooks put there; the operations come in a
// fixed order.
func diff(old, new *corev1.Pod) []operation {
	var ops []operation
	ops = diffMap(ops, "/metadata/labels", old.Labels, new.Labels)
	ops = diffMap(ops, "/metadata/annotations", old.Annotations, new.Annotations)
	ops = diffList(ops, "/spec/volumes", old.Spec.Volumes, new.Spec.Volumes)
	ops = diffList(ops, "/spec/initContainers", old.Spec.InitContainers, new.Spec.InitContainers)
	if len(old.Spec.Containers) != len(new.Spec.Containers) {
		ops = replace(ops, "/spec/containers", old.Spec.Containers, new.Spec.Containers)
	} else {
		for i := range new.Spec.Containers {
			o, n := &old.Spec.Containers[i], &new.Spec.Containers[i]
			p := "/spec/containers/" + strconv.Itoa(i)
			// A wrapped command is a new command, not a longer one.
			ops = replace(ops, p+"/command", o.Command, n.Command)
			ops = replace(ops, p+"/args", o.Args, n.Args)
			ops = diffList(ops, p+"/ports", o.Ports, n.Ports)
			ops = diffList(ops, p+"/env", o.Env, n.Env)
			ops = diffList(ops, p+"/volumeMounts", o.VolumeMounts, n.VolumeMounts)
		}
	}
	ops = replace(ops, "/spec/schedulerName", old.Spec.SchedulerName, new.Spec.SchedulerName)
	return diffList(ops, "/spec/readinessGates", old.Spec.ReadinessGates, new.Spec.ReadinessGates)
}

// replace sets path to new as a whole. old and new are values of a field
// that JSON omits when empty, so an empty old means the path may be
// absent ("add" works either way) and an empty new means "remove".
func replace[T any](ops []operation, path string, old, new T) []operation {
	oldEmpty, newEmpty := isEmpty(old), isEmpty(new)
	switch {
	case equality.Semantic.DeepEqual(old, new) || (oldEmpty && newEmpty):
		return ops
	case newEmpty:
		return append(ops, operation{Op: "remove", Path: path})
	case oldEmpty:
		return append(ops, operation{Op: "add", Path: path, Value: new})
	}
	return append(ops, operation{Op: "replace", Path: path, Value: new})
}

func isEmpty(v any) bool {
	switch v := v.(type) {
	case string:
		return v == ""
	case []string:
		return len(v) == 0
	case []corev1.Container:
		return len(v) == 0
	}
	return false
}

// diffList adds the items new has beyond old at its end or its start, and
// replaces the list otherwise.
func diffList[T any](ops []operation, path string, old, new []T) []operation {
	eq := func(a, b []T) bool { return equality.Semantic.DeepEqual(a, b) }
	switch {
	case len(new) == len(old) && eq(old, new):
		return ops
	case len(old) == 0:
		return append(ops, operation{Op: "add", Path: path, Value: new})
	case len(new) == 0:
		return append(ops, operation{Op: "remove", Path: path})
	case len(new) > len(old) && eq(old, new[:len(old)]):
		for _, v := range new[len(old):] {
			ops = append(ops, operation{Op: "add", Path: path + "/-", Value: v})
		}
		return ops
	case len(new) > len(old) && eq(old, new[len(new)-len(old):]):
		for i, v := range new[:len(new)-len(old)] {
			ops = append(ops, operation{Op: "add", Path: path + "/" + strconv.Itoa(i), Value: v})
		}
		return ops
	}
	return append(ops, operation{Op: "replace", Path: path, Value: new})
}

func diffMap(ops []operation, path string, old, new map[string]string) []operation {
	if len(old) == 0 {
		if len(new) == 0 {
			return ops
		}
		return append(ops, operation{Op: "add", Path: path, Value: new})
	}
	if len(new) == 0 {
		return append(ops, operation{Op: "remove", Path: path})
	}
	keys := make([]string, 0, len(old)+len(new))
	for k := range old {
		keys = append(keys, k)
	}
	for k := range new {
		if _, ok := old[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		p := path + "/" + pointerEscape.Replace(k)
		o, inOld := old[k]
		n, inNew := new[k]
		switch {
		case !inNew:
			ops = append(ops, operation{Op: "remove", Path: p})
		case !inOld:
			ops = append(ops, operation{Op: "add", Path: p, Value: n})
		case o != n:
			ops = append(ops, operation{Op: "replace", Path: p, Value: n})
		}
	}
	return ops
}

// pointerEscape escapes a map key for a JSON pointer (RFC 6901).
var pointerEscape = strings.NewReplacer("~", "~0", "/", "~1")
