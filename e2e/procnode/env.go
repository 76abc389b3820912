package procnode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/pkg/api/v1/resource"
	podshelper "k8s.io/kubernetes/pkg/apis/core/pods"
	"k8s.io/kubernetes/pkg/fieldpath"
	kubecontainer "k8s.io/kubernetes/pkg/kubelet/container"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"
)

// prepare works out what the container runs: env as the kubelet makes it,
// command and args expanded, the agent image mapped to the agent binary,
// and container paths under volume mounts translated to host paths.
func (c *ctr) prepare(ctx context.Context) (*processSpec, error) {
	pod := c.pr.current()
	envs, err := c.pr.makeEnvironmentVariables(ctx, pod, c.spec)
	if err != nil {
		return nil, err
	}
	command, args := kubecontainer.ExpandContainerCommandAndArgs(c.spec, envs)
	mounts, err := c.pr.mountTable(c.spec)
	if err != nil {
		return nil, err
	}

	var argv []string
	switch {
	case c.pr.p.isAgentImage(c.spec.Image):
		bin := c.pr.p.cfg.AgentBin
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("agent image %s: agent binary: %w (make build builds it)", c.spec.Image, err)
		}
		if len(command) > 0 {
			argv = append([]string{bin}, command[1:]...)
		} else {
			argv = []string{bin} // the image's entrypoint
		}
		argv = append(argv, args...)
		for i := 1; i < len(argv); i++ {
			argv[i] = mounts.translate(argv[i])
		}
	default:
		argv = append(command, args...)
		if len(argv) == 0 {
			return nil, errNoCommand
		}
		for i := range argv {
			argv[i] = mounts.translate(argv[i])
		}
	}

	// What an image would set, for a process on this host: the launcher's
	// PATH, and a home in the pod's dir. Then the container's own env.
	env := map[string]string{
		"PATH":     os.Getenv("PATH"),
		"HOSTNAME": pod.Name,
		"HOME":     c.pr.dir,
	}
	for _, e := range envs {
		env[e.Name] = mounts.translate(e.Value)
	}
	var envList []string
	for _, k := range slices.Sorted(mapsKeys(env)) {
		envList = append(envList, k+"="+env[k])
	}

	dir := c.pr.dir
	if c.spec.WorkingDir != "" {
		dir = mounts.translate(c.spec.WorkingDir)
		// A runtime creates a missing working dir; do so only inside the
		// pod's own dir, never anywhere else on the host.
		if _, err := os.Stat(dir); err != nil {
			if !strings.HasPrefix(dir, c.pr.dir+"/") {
				return nil, fmt.Errorf("working dir %s (from %s): %w", dir, c.spec.WorkingDir, err)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, fmt.Errorf("create working dir: %w", err)
			}
		}
	}
	return &processSpec{argv: argv, env: envList, dir: dir}, nil
}

func mapsKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// makeEnvironmentVariables follows the kubelet's function of that name:
// envFrom first, then env in order, each value expanded against the
// variables before it; fieldRef, resourceFieldRef, configMapKeyRef and
// secretKeyRef resolved (ConfigMaps and Secrets read from the API). There
// are no service environment variables: nothing routes to ClusterIPs here.
func (pr *podRuntime) makeEnvironmentVariables(ctx context.Context, pod *corev1.Pod, container *corev1.Container) ([]kubecontainer.EnvVar, error) {
	cs := pr.p.client.CoreV1()
	var (
		configMaps = map[string]*corev1.ConfigMap{}
		secrets    = map[string]*corev1.Secret{}
		tmpEnv     = map[string]string{}
		err        error
	)
	getConfigMap := func(name string) (*corev1.ConfigMap, error) {
		if cm, ok := configMaps[name]; ok {
			return cm, nil
		}
		cm, err := cs.ConfigMaps(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		configMaps[name] = cm
		return cm, nil
	}
	getSecret := func(name string) (*corev1.Secret, error) {
		if s, ok := secrets[name]; ok {
			return s, nil
		}
		s, err := cs.Secrets(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		secrets[name] = s
		return s, nil
	}

	for _, envFrom := range container.EnvFrom {
		switch {
		case envFrom.ConfigMapRef != nil:
			ref := envFrom.ConfigMapRef
			cm, err := getConfigMap(ref.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom configMap %s/%s: %w", pod.Namespace, ref.Name, err)
			}
			for k, v := range cm.Data {
				tmpEnv[envFrom.Prefix+k] = v
			}
		case envFrom.SecretRef != nil:
			ref := envFrom.SecretRef
			s, err := getSecret(ref.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom secret %s/%s: %w", pod.Namespace, ref.Name, err)
			}
			for k, v := range s.Data {
				tmpEnv[envFrom.Prefix+k] = string(v)
			}
		}
	}

	mappingFunc := expansion.MappingFuncFor(tmpEnv)
	for _, envVar := range container.Env {
		runtimeVal := envVar.Value
		if runtimeVal != "" {
			runtimeVal = expansion.Expand(runtimeVal, mappingFunc)
		} else if envVar.ValueFrom != nil {
			from := envVar.ValueFrom
			switch {
			case from.FieldRef != nil:
				if runtimeVal, err = pr.podFieldSelectorRuntimeValue(from.FieldRef, pod); err != nil {
					return nil, fmt.Errorf("env %s: %w", envVar.Name, err)
				}
			case from.ResourceFieldRef != nil:
				name := from.ResourceFieldRef.ContainerName
				if name == "" {
					name = container.Name
				}
				// Unset limits read as the node's allocatable, as on a kubelet.
				if runtimeVal, err = resource.ExtractResourceValueByContainerNameAndNodeAllocatable(from.ResourceFieldRef, pod, name, pr.p.allocatable); err != nil {
					return nil, fmt.Errorf("env %s: %w", envVar.Name, err)
				}
			case from.ConfigMapKeyRef != nil:
				ref := from.ConfigMapKeyRef
				optional := ref.Optional != nil && *ref.Optional
				cm, err := getConfigMap(ref.Name)
				if err != nil {
					if apierrors.IsNotFound(err) && optional {
						continue
					}
					return nil, fmt.Errorf("env %s: configMap %s/%s: %w", envVar.Name, pod.Namespace, ref.Name, err)
				}
				v, ok := cm.Data[ref.Key]
				if !ok {
					if optional {
						continue
					}
					return nil, fmt.Errorf("couldn't find key %v in ConfigMap %v/%v", ref.Key, pod.Namespace, ref.Name)
				}
				runtimeVal = v
			case from.SecretKeyRef != nil:
				ref := from.SecretKeyRef
				optional := ref.Optional != nil && *ref.Optional
				s, err := getSecret(ref.Name)
				if err != nil {
					if apierrors.IsNotFound(err) && optional {
						continue
					}
					return nil, fmt.Errorf("env %s: secret %s/%s: %w", envVar.Name, pod.Namespace, ref.Name, err)
				}
				v, ok := s.Data[ref.Key]
				if !ok {
					if optional {
						continue
					}
					return nil, fmt.Errorf("couldn't find key %v in Secret %v/%v", ref.Key, pod.Namespace, ref.Name)
				}
				runtimeVal = string(v)
			}
		}
		tmpEnv[envVar.Name] = runtimeVal
	}

	result := make([]kubecontainer.EnvVar, 0, len(tmpEnv))
	for k, v := range tmpEnv {
		result = append(result, kubecontainer.EnvVar{Name: k, Value: v})
	}
	sort.Slice(result, func(i, j int) bool { return result[i].Name < result[j].Name })
	return result, nil
}

// podFieldSelectorRuntimeValue is the kubelet's: the pod's addresses are
// this node's, everything else comes from the pod object.
func (pr *podRuntime) podFieldSelectorRuntimeValue(fs *corev1.ObjectFieldSelector, pod *corev1.Pod) (string, error) {
	apiVersion := fs.APIVersion
	if apiVersion == "" {
		apiVersion = "v1"
	}
	internalFieldPath, _, err := podshelper.ConvertDownwardAPIFieldLabel(apiVersion, fs.FieldPath, "")
	if err != nil {
		return "", err
	}
	switch internalFieldPath {
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.hostIPs":
		return hostIP, nil
	case "status.podIP", "status.podIPs":
		return pr.ip.String(), nil
	}
	return fieldpath.ExtractFieldPathAsString(pod, internalFieldPath)
}

// mountTable maps a container's mount paths to host paths.
type mountTable []struct{ mountPath, hostPath string }

// translate rewrites a value that is a path under a mount (see the package
// doc); the longest mount path wins.
func (t mountTable) translate(v string) string {
	for _, m := range t {
		if v == m.mountPath {
			return m.hostPath
		}
		if strings.HasPrefix(v, m.mountPath+"/") {
			return m.hostPath + v[len(m.mountPath):]
		}
	}
	return v
}

func (pr *podRuntime) mountTable(container *corev1.Container) (mountTable, error) {
	pr.mu.Lock()
	vols := pr.volumes
	pr.mu.Unlock()
	var t mountTable
	for _, m := range container.VolumeMounts {
		host, ok := vols[m.Name]
		if !ok {
			return nil, fmt.Errorf("volume mount %s: no volume %q in the pod", m.MountPath, m.Name)
		}
		if m.SubPath != "" {
			sub := filepath.Clean("/" + m.SubPath) // no escaping the volume
			host = filepath.Join(host, sub)
			if err := os.MkdirAll(host, 0o755); err != nil {
				return nil, fmt.Errorf("volume mount %s: subPath: %w", m.MountPath, err)
			}
		}
		mp := strings.TrimRight(m.MountPath, "/")
		if mp == "" {
			return nil, fmt.Errorf("volume mount of %q at /: not possible for a process on the host", m.Name)
		}
		t = append(t, struct{ mountPath, hostPath string }{mp, host})
	}
	sort.SliceStable(t, func(i, j int) bool { return len(t[i].mountPath) > len(t[j].mountPath) })
	return t, nil
}

// isAgentImage reports whether image is of the agent's repository, with any
// tag or digest.
func (p *provider) isAgentImage(image string) bool {
	return imageRepository(image) == imageRepository(p.cfg.AgentImage)
}

// imageRepository strips the tag and digest off an image reference, and
// Docker Hub's implicit prefixes.
func imageRepository(image string) string {
	repo, _, _ := strings.Cut(image, "@")
	if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
		repo = repo[:i]
	}
	repo = strings.TrimPrefix(repo, "docker.io/")
	repo = strings.TrimPrefix(repo, "library/")
	return repo
}
