package webhook

import (
	"context"
	"fmt"
	"path"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/muster-dev/muster/podapi"
)

// read defaults, then validates, the group fields of an annotated pod
// (podapi.Read), then what would stop the agent from serving: ports and
// the token's volume and mount.
func (h *handler) read(ctx context.Context, pod *corev1.Pod) (podapi.Member, field.ErrorList) {
	m, errs := podapi.Read(ctx, pod, podapi.ReadOptions{
		Runtimes:     h.cfg.Runtimes,
		EndpointPort: h.cfg.EndpointPort,
		SizeLookup:   h.cfg.SizeLookup,
		GangLookup:   h.cfg.GangLookup,
	})
	if m.Container < 0 {
		return m, errs
	}
	errs = append(errs, portConflicts(pod, m, podapi.AnnotationPath(podapi.AnnotationEndpointPort))...)
	return m, append(errs, h.tokenConflicts(pod, m)...)
}

var (
	containersPath = podapi.ContainersPath()
	volumesPath    = field.NewPath("spec", "volumes")
)

// portConflicts finds ports that would stop the agent from serving its
// endpoint: the runtime's port, or a port a container of the pod declares
// (containers share the pod's network namespace).
func portConflicts(pod *corev1.Pod, m podapi.Member, endpointPath *field.Path) field.ErrorList {
	if m.EndpointPort == 0 {
		return nil // already reported as invalid
	}
	var errs field.ErrorList
	if m.Port == m.EndpointPort {
		errs = append(errs, field.Invalid(endpointPath, int64(m.EndpointPort), fmt.Sprintf(
			"the agent's endpoint and the runtime (%s) cannot share a port; set %s to another port", podapi.AnnotationPort, podapi.AnnotationEndpointPort)))
	}
	for i, c := range pod.Spec.Containers {
		for j, p := range c.Ports {
			ours := i == m.Container && p.Name == PortName
			switch {
			case ours && p.ContainerPort != int32(m.EndpointPort):
				errs = append(errs, field.Invalid(containersPath.Index(i).Child("ports").Index(j).Child("name"), p.Name, fmt.Sprintf(
					"the port name %s is reserved for the agent's endpoint (port %d); rename this port", PortName, m.EndpointPort)))
			case !ours && p.ContainerPort == int32(m.EndpointPort) && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP):
				errs = append(errs, field.Invalid(endpointPath, int64(m.EndpointPort), fmt.Sprintf(
					"%s already uses this port; set %s to a free port", containersPath.Index(i).Child("ports").Index(j), podapi.AnnotationEndpointPort)))
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
func (h *handler) tokenConflicts(pod *corev1.Pod, m podapi.Member) field.ErrorList {
	var errs field.ErrorList
	for i, v := range pod.Spec.Volumes {
		if v.Name == TokenVolumeName && !h.isOurTokenVolume(v) {
			errs = append(errs, field.Invalid(volumesPath.Index(i).Child("name"), v.Name, fmt.Sprintf(
				"the volume name %s is reserved for the agent's service-account token, which the webhook adds (projected serviceAccountToken, audience %q, expirationSeconds %d, path %s); rename this volume",
				TokenVolumeName, h.cfg.TokenAudience, int64(h.cfg.TokenExpiration/time.Second), TokenPath)))
		}
	}
	for j, vm := range pod.Spec.Containers[m.Container].VolumeMounts {
		if p := path.Clean(vm.MountPath); (p == TokenDir || strings.HasPrefix(p, TokenDir+"/")) && !isTokenMount(vm) {
			errs = append(errs, field.Invalid(containersPath.Index(m.Container).Child("volumeMounts").Index(j).Child("mountPath"), vm.MountPath, fmt.Sprintf(
				"%s is where the agent reads its token (%s); mount this volume elsewhere", TokenDir, TokenFile)))
		}
	}
	return errs
}
