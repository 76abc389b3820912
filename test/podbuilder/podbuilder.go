// Package podbuilder builds pods for tests, in the style of the scheduler
// framework's st.MakePod() (k8s.io/kubernetes/pkg/scheduler/testing):
//
//	pod := podbuilder.MakePod().Namespace("ns").Name("llama-0").
//		Group("llama").Size(2).Inject().Runtime("torchrun").
//		Container("model", "example.com/model").Command("python3", "serve.py").GPU(8).
//		Obj()
//
// The methods for muster's pod contract (Group, Size, Inject, Runtime, ...)
// write podapi's labels and annotations; Label and Annotation write any
// other. Command, Args, GPU and Request change the container added last by
// Container. Only tests import this package.
package podbuilder

import (
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/muster-dev/muster/podapi"
)

// PodWrapper wraps a pod under construction; every method changes it and
// returns the wrapper.
type PodWrapper struct{ v1.Pod }

// MakePod starts an empty pod: no name, no labels, no containers.
func MakePod() *PodWrapper { return &PodWrapper{} }

// Obj returns the pod built so far (not a copy).
func (p *PodWrapper) Obj() *v1.Pod { return &p.Pod }

// Name sets metadata.name.
func (p *PodWrapper) Name(name string) *PodWrapper {
	p.Pod.Name = name
	return p
}

// Namespace sets metadata.namespace.
func (p *PodWrapper) Namespace(ns string) *PodWrapper {
	p.Pod.Namespace = ns
	return p
}

// CreationTimestamp sets metadata.creationTimestamp.
func (p *PodWrapper) CreationTimestamp(t time.Time) *PodWrapper {
	p.Pod.CreationTimestamp = metav1.NewTime(t)
	return p
}

// Label sets a label.
func (p *PodWrapper) Label(key, value string) *PodWrapper {
	if p.Labels == nil {
		p.Labels = map[string]string{}
	}
	p.Labels[key] = value
	return p
}

// Annotation sets an annotation.
func (p *PodWrapper) Annotation(key, value string) *PodWrapper {
	if p.Annotations == nil {
		p.Annotations = map[string]string{}
	}
	p.Annotations[key] = value
	return p
}

// Group names the pod's muster group (label muster.dev/group).
func (p *PodWrapper) Group(name string) *PodWrapper {
	return p.Label(podapi.LabelGroup, name)
}

// PodGroup names the scheduler-plugins PodGroup the pod belongs to (label
// scheduling.x-k8s.io/pod-group), as LeaderWorkerSet and Kueue label pods.
func (p *PodWrapper) PodGroup(name string) *PodWrapper {
	return p.Label(podapi.LabelPodGroup, name)
}

// SchedulingGroup names an upstream scheduling.k8s.io PodGroup in
// spec.schedulingGroup.
func (p *PodWrapper) SchedulingGroup(podGroup string) *PodWrapper {
	p.Spec.SchedulingGroup = &v1.PodSchedulingGroup{PodGroupName: &podGroup}
	return p
}

// Size sets the group's size (annotation muster.dev/size). A test of a bad
// value sets it with Annotation(podapi.AnnotationSize, "two").
func (p *PodWrapper) Size(n int) *PodWrapper {
	return p.Annotation(podapi.AnnotationSize, strconv.Itoa(n))
}

// PodIndex sets the ordinal a StatefulSet gives its pods (label
// apps.kubernetes.io/pod-index).
func (p *PodWrapper) PodIndex(i int) *PodWrapper {
	return p.Label(appsv1.PodIndexLabel, strconv.Itoa(i))
}

// Inject asks the webhook for the agent (annotation muster.dev/inject=true).
func (p *PodWrapper) Inject() *PodWrapper {
	return p.Annotation(podapi.AnnotationInject, "true")
}

// Runtime names the runtime preset (annotation muster.dev/runtime).
func (p *PodWrapper) Runtime(name string) *PodWrapper {
	return p.Annotation(podapi.AnnotationRuntime, name)
}

// Port sets the runtime's serving port (annotation muster.dev/port).
func (p *PodWrapper) Port(port int) *PodWrapper {
	return p.Annotation(podapi.AnnotationPort, strconv.Itoa(port))
}

// TopologyKey sets the node label the group must share (annotation
// muster.dev/topology-key).
func (p *PodWrapper) TopologyKey(key string) *PodWrapper {
	return p.Annotation(podapi.AnnotationTopologyKey, key)
}

// Container adds a container; Command, Args, GPU and Request change it
// until the next one is added.
func (p *PodWrapper) Container(name, image string) *PodWrapper {
	p.Spec.Containers = append(p.Spec.Containers, v1.Container{Name: name, Image: image})
	return p
}

// last is the container added last; a method that needs one before
// Container was called is a mistake in the test.
func (p *PodWrapper) last() *v1.Container {
	if len(p.Spec.Containers) == 0 {
		panic("podbuilder: call Container before Command, Args, GPU or Request")
	}
	return &p.Spec.Containers[len(p.Spec.Containers)-1]
}

// Command sets the last container's command.
func (p *PodWrapper) Command(command ...string) *PodWrapper {
	p.last().Command = command
	return p
}

// Args sets the last container's args.
func (p *PodWrapper) Args(args ...string) *PodWrapper {
	p.last().Args = args
	return p
}

// GPU makes the last container request and limit n GPUs
// (podapi.ResourceGPU), as a GPU workload does: an extended resource's
// request and limit are equal.
func (p *PodWrapper) GPU(n int64) *PodWrapper {
	c := p.last()
	q := *resource.NewQuantity(n, resource.DecimalSI)
	if c.Resources.Requests == nil {
		c.Resources.Requests = v1.ResourceList{}
	}
	if c.Resources.Limits == nil {
		c.Resources.Limits = v1.ResourceList{}
	}
	c.Resources.Requests[podapi.ResourceGPU] = q
	c.Resources.Limits[podapi.ResourceGPU] = q
	return p
}

// Request adds a request of quantity q (as resource.MustParse reads it) to
// the last container.
func (p *PodWrapper) Request(name v1.ResourceName, q string) *PodWrapper {
	c := p.last()
	if c.Resources.Requests == nil {
		c.Resources.Requests = v1.ResourceList{}
	}
	c.Resources.Requests[name] = resource.MustParse(q)
	return p
}

// SchedulerName sets spec.schedulerName.
func (p *PodWrapper) SchedulerName(name string) *PodWrapper {
	p.Spec.SchedulerName = name
	return p
}

// Node binds the pod to a node (spec.nodeName), past any scheduler.
func (p *PodWrapper) Node(name string) *PodWrapper {
	p.Spec.NodeName = name
	return p
}

// NodeSelector sets spec.nodeSelector.
func (p *PodWrapper) NodeSelector(selector map[string]string) *PodWrapper {
	p.Spec.NodeSelector = selector
	return p
}

// Toleration adds a toleration of the NoSchedule taint key, whatever its
// value (kwok nodes carry kwok.x-k8s.io/node).
func (p *PodWrapper) Toleration(key string) *PodWrapper {
	p.Spec.Tolerations = append(p.Spec.Tolerations, v1.Toleration{Key: key, Operator: v1.TolerationOpExists, Effect: v1.TaintEffectNoSchedule})
	return p
}

// Priority sets spec.priority.
func (p *PodWrapper) Priority(priority int32) *PodWrapper {
	p.Spec.Priority = &priority
	return p
}

// ServiceAccount sets spec.serviceAccountName.
func (p *PodWrapper) ServiceAccount(name string) *PodWrapper {
	p.Spec.ServiceAccountName = name
	return p
}

// TerminationGracePeriod sets spec.terminationGracePeriodSeconds.
func (p *PodWrapper) TerminationGracePeriod(seconds int64) *PodWrapper {
	p.Spec.TerminationGracePeriodSeconds = &seconds
	return p
}
