package deploy_test

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// podSpec is the pod template of a workload the chart renders.
func podSpec(t *testing.T, o *unstructured.Unstructured) corev1.PodSpec {
	t.Helper()
	var spec corev1.PodSpec
	raw, _, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec")
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &spec); err != nil {
		t.Fatal(err)
	}
	return spec
}

// readinessProbe is the readiness probe of the workload's first container.
func readinessProbe(t *testing.T, o *unstructured.Unstructured) *corev1.Probe {
	t.Helper()
	spec := podSpec(t, o)
	if p := spec.Containers[0].ReadinessProbe; p != nil {
		return p
	}
	t.Fatalf("%s has no readiness probe", o.GetName())
	return nil
}

// materializeMounts makes, for each mount of the workload's first
// container, a directory holding what the kubelet would put there: the
// chart's Secret or ConfigMap of that name (its items, when it lists
// some, under their paths), or nothing (emptyDir, a StatefulSet's claim). It returns the
// directories by mount path. A volume the chart mounts from an object it
// does not render fails the test: the pod would never start.
func materializeMounts(t *testing.T, objs []*unstructured.Unstructured, o *unstructured.Unstructured) map[string]string {
	t.Helper()
	spec := podSpec(t, o)
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	// A StatefulSet's claims start empty, like an emptyDir.
	claims, _, _ := unstructured.NestedSlice(o.Object, "spec", "volumeClaimTemplates")
	for _, c := range claims {
		name, _, _ := unstructured.NestedString(c.(map[string]any), "metadata", "name")
		volumes[name] = corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
	}
	out := map[string]string{}
	for _, m := range spec.Containers[0].VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			t.Fatalf("%s mounts volume %s, which its pod does not have", o.GetName(), m.Name)
		}
		dir := t.TempDir()
		files := map[string][]byte{}
		var items []corev1.KeyToPath
		switch {
		case v.Secret != nil:
			s := find(t, objs, "Secret", v.Secret.SecretName)
			data, _, _ := unstructured.NestedStringMap(s.Object, "data")
			for k, b64 := range data {
				b, err := base64.StdEncoding.DecodeString(b64)
				if err != nil {
					t.Fatalf("Secret %s: data[%s]: %v", s.GetName(), k, err)
				}
				files[k] = b
			}
			items = v.Secret.Items
		case v.ConfigMap != nil:
			cm := find(t, objs, "ConfigMap", v.ConfigMap.Name)
			data, _, _ := unstructured.NestedStringMap(cm.Object, "data")
			for k, s := range data {
				files[k] = []byte(s)
			}
			items = v.ConfigMap.Items
		case v.EmptyDir != nil:
		default:
			t.Fatalf("%s: volume %s: a kind this test does not materialize", o.GetName(), v.Name)
		}
		if items != nil {
			picked := map[string][]byte{}
			for _, it := range items {
				b, ok := files[it.Key]
				if !ok {
					t.Fatalf("%s: volume %s names key %s, which the chart's object does not have", o.GetName(), v.Name, it.Key)
				}
				picked[it.Path] = b
			}
			files = picked
		}
		for name, b := range files {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		out[m.MountPath] = dir
	}
	return out
}

// inMounts maps a path in the container to the directory
// materializeMounts made for its mount; other values are returned as
// they are.
func inMounts(mounts map[string]string, value string) string {
	for mount, dir := range mounts {
		if value == mount {
			return dir
		}
		if rest, ok := strings.CutPrefix(value, mount+"/"); ok {
			return filepath.Join(dir, rest)
		}
	}
	return value
}
