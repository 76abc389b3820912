package procnode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/pkg/api/v1/resource"
	"k8s.io/kubernetes/pkg/fieldpath"
)

// makeVolumes creates a host dir per volume under <pod dir>/volumes and
// fills configMap, secret, downwardAPI and projected volumes once; it
// returns the dirs by volume name and the service-account token files
// (see token.go), which are to be refreshed. Other volume types get an
// empty dir: better than refusing the pod, and nothing here could provide
// them anyway.
func (pr *podRuntime) makeVolumes(ctx context.Context, pod *corev1.Pod) (map[string]string, []*projectedToken, error) {
	vols := map[string]string{}
	var tokens []*projectedToken
	for _, v := range pod.Spec.Volumes {
		dir := filepath.Join(pr.dir, "volumes", v.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		files, err := pr.volumeFiles(ctx, pod, &v)
		if err != nil {
			return nil, nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		for name, f := range files {
			path := filepath.Join(dir, filepath.Clean("/"+name))
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return nil, nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			if err := writeFileAtomic(path, f.data, f.mode); err != nil {
				return nil, nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			if f.token != nil {
				f.token.path = path
				tokens = append(tokens, f.token)
			}
		}
		vols[v.Name] = dir
	}
	return vols, tokens, nil
}

type volumeFile struct {
	data []byte
	mode os.FileMode
	// token is set for a service-account token, which is to be refreshed.
	token *projectedToken
}

func (pr *podRuntime) volumeFiles(ctx context.Context, pod *corev1.Pod, v *corev1.Volume) (map[string]volumeFile, error) {
	cs := pr.p.client.CoreV1()
	mode := func(def *int32, item *int32) os.FileMode {
		switch {
		case item != nil:
			return os.FileMode(*item)
		case def != nil:
			return os.FileMode(*def)
		}
		return 0o644
	}
	keyed := func(data map[string][]byte, items []corev1.KeyToPath, def *int32, optional bool, what string) (map[string]volumeFile, error) {
		files := map[string]volumeFile{}
		if len(items) == 0 {
			for k, d := range data {
				files[k] = volumeFile{data: d, mode: mode(def, nil)}
			}
			return files, nil
		}
		for _, it := range items {
			d, ok := data[it.Key]
			if !ok {
				if optional {
					continue
				}
				return nil, fmt.Errorf("%s has no key %q", what, it.Key)
			}
			files[it.Path] = volumeFile{data: d, mode: mode(def, it.Mode)}
		}
		return files, nil
	}
	switch {
	case v.ConfigMap != nil:
		src := v.ConfigMap
		optional := src.Optional != nil && *src.Optional
		cm, err := cs.ConfigMaps(pod.Namespace).Get(ctx, src.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && optional {
				return nil, nil
			}
			return nil, fmt.Errorf("configMap %s: %w", src.Name, err)
		}
		data := map[string][]byte{}
		for k, s := range cm.Data {
			data[k] = []byte(s)
		}
		for k, b := range cm.BinaryData {
			data[k] = b
		}
		return keyed(data, src.Items, src.DefaultMode, optional, "configMap "+src.Name)
	case v.Secret != nil:
		src := v.Secret
		optional := src.Optional != nil && *src.Optional
		s, err := cs.Secrets(pod.Namespace).Get(ctx, src.SecretName, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && optional {
				return nil, nil
			}
			return nil, fmt.Errorf("secret %s: %w", src.SecretName, err)
		}
		return keyed(s.Data, src.Items, src.DefaultMode, optional, "secret "+src.SecretName)
	case v.DownwardAPI != nil:
		files := map[string]volumeFile{}
		for _, it := range v.DownwardAPI.Items {
			var val string
			var err error
			switch {
			case it.FieldRef != nil:
				val, err = pr.downwardFieldValue(it.FieldRef, pod)
			case it.ResourceFieldRef != nil:
				val, err = resource.ExtractResourceValueByContainerNameAndNodeAllocatable(it.ResourceFieldRef, pod, it.ResourceFieldRef.ContainerName, pr.p.allocatable)
			}
			if err != nil {
				return nil, fmt.Errorf("downwardAPI %s: %w", it.Path, err)
			}
			files[it.Path] = volumeFile{data: []byte(val), mode: mode(v.DownwardAPI.DefaultMode, it.Mode)}
		}
		return files, nil
	case v.Projected != nil:
		return pr.projectedFiles(ctx, pod, v.Projected)
	}
	return nil, nil
}

// downwardFieldValue is a fieldRef as a downwardAPI volume file has it:
// whole label and annotation maps are formatted one key="value" per line.
func (pr *podRuntime) downwardFieldValue(fs *corev1.ObjectFieldSelector, pod *corev1.Pod) (string, error) {
	switch strings.TrimSpace(fs.FieldPath) {
	case "metadata.labels":
		return fieldpath.FormatMap(pod.Labels), nil
	case "metadata.annotations":
		return fieldpath.FormatMap(pod.Annotations), nil
	}
	return pr.podFieldSelectorRuntimeValue(fs, pod)
}
