package cluster

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// NodeBackend puts nodes into the cluster and plays their kubelets. The
// cluster starts it once the control plane serves, and then waits until
// every node in NodeNames is Ready and carries no node.kubernetes.io taint.
//
// KwokNodes (fake kubelets: pods go Running but run nothing) is the
// default; a backend whose pods really run (a virtual kubelet that starts
// each container's command as a local process) implements the same
// interface.
type NodeBackend interface {
	// Start creates the Node objects and starts whatever keeps them alive.
	// Processes started with c.StartProcess are stopped by c.Stop.
	Start(ctx context.Context, c *Cluster) error
	// NodeNames lists the nodes this backend manages.
	NodeNames() []string
	// Stop releases what Start set up apart from processes started with
	// c.StartProcess (those the cluster stops itself, after Stop).
	Stop() error
}

// Well-known labels and resources on the nodes.
const (
	// RackLabel is the topology label NodeShape puts on every node.
	RackLabel = "topology.muster.dev/rack"
	// GPUResource is the extended resource NodeShape gives every node.
	GPUResource corev1.ResourceName = "nvidia.com/gpu"
	// KwokAnnotation marks nodes that kwok manages (kwok runs with
	// --manage-nodes-with-annotation-selector=KwokAnnotation=fake), so
	// nodes of another backend in the same cluster are left alone.
	KwokAnnotation = "kwok.x-k8s.io/node"
)

// NodeShape describes a set of identical nodes, grouped into racks.
type NodeShape struct {
	// Count nodes named Prefix0 .. Prefix<Count-1>.
	Count  int
	Prefix string
	// Per-node capacity (and allocatable: nothing is reserved).
	GPUs   int64
	CPU    string // a resource quantity, e.g. "64"
	Memory string // e.g. "512Gi"
	Pods   int64
	// RackSize nodes share a RackLabel value: rack-a, rack-b, ... rack-z,
	// rack-aa, ... 0 puts all nodes in rack-a.
	RackSize int
	// Labels are added to every node.
	Labels map[string]string
	// Annotations are added to every node (backends add their own marker).
	Annotations map[string]string
}

// DefaultNodeShape: 4 nodes of 8 GPUs, two per rack.
func DefaultNodeShape() NodeShape {
	return NodeShape{Count: 4, Prefix: "node-", GPUs: 8, CPU: "64", Memory: "512Gi", Pods: 110, RackSize: 2}
}

// RackName is the rack of the i-th rack: rack-a ... rack-z, rack-aa ...
func RackName(i int) string {
	s := ""
	for i++; i > 0; i = (i - 1) / 26 {
		s = string(rune('a'+(i-1)%26)) + s
	}
	return "rack-" + s
}

// Nodes builds the Node objects of the shape, status included: a Node's
// status may be set on create, and kwok keeps the capacity it finds there.
func (s NodeShape) Nodes() ([]*corev1.Node, error) {
	if s.Count < 0 {
		return nil, fmt.Errorf("node count %d: must not be negative", s.Count)
	}
	cpu, err := resource.ParseQuantity(s.CPU)
	if err != nil {
		return nil, fmt.Errorf("node cpu %q: %w", s.CPU, err)
	}
	mem, err := resource.ParseQuantity(s.Memory)
	if err != nil {
		return nil, fmt.Errorf("node memory %q: %w", s.Memory, err)
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    cpu,
		corev1.ResourceMemory: mem,
		corev1.ResourcePods:   *resource.NewQuantity(s.Pods, resource.DecimalSI),
	}
	if s.GPUs > 0 {
		capacity[GPUResource] = *resource.NewQuantity(s.GPUs, resource.DecimalSI)
	}
	nodes := make([]*corev1.Node, 0, s.Count)
	for i := range s.Count {
		name := s.Prefix + strconv.Itoa(i)
		rack := 0
		if s.RackSize > 0 {
			rack = i / s.RackSize
		}
		labels := map[string]string{
			corev1.LabelHostname:   name,
			corev1.LabelOSStable:   "linux",
			corev1.LabelArchStable: "amd64",
			RackLabel:              RackName(rack),
		}
		for k, v := range s.Labels {
			labels[k] = v
		}
		annotations := map[string]string{}
		for k, v := range s.Annotations {
			annotations[k] = v
		}
		nodes = append(nodes, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: annotations},
			Status: corev1.NodeStatus{
				Capacity:    capacity.DeepCopy(),
				Allocatable: capacity.DeepCopy(),
			},
		})
	}
	return nodes, nil
}

// CreateNodes creates nodes with a few requests in flight (hundreds of
// nodes one by one take long on a 2-core machine). A node that already
// exists is an error: a fresh cluster has none.
func CreateNodes(ctx context.Context, cs kubernetes.Interface, nodes []*corev1.Node) error {
	const parallel = 16
	sem := make(chan struct{}, parallel)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, n := range nodes {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("create node %s: %w", n.Name, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		errs = append(errs, fmt.Errorf("create nodes: %w", err))
	}
	if len(errs) > 3 {
		errs = append(errs[:3], fmt.Errorf("and %d more", len(errs)-3))
	}
	return errors.Join(errs...)
}

//go:embed kwok-stages.yaml
var kwokStages []byte

// KwokNodes are Node objects whose kubelet is kwok: it keeps them Ready
// (status, heartbeats, leases) and moves pods bound to them to Running
// (they run nothing) and deletes them when asked.
type KwokNodes struct {
	Shape NodeShape
	// Bin is the kwok binary.
	Bin string
	// PodCIDR is where kwok draws pod IPs from. Default 127.128.0.0/9:
	// loopback, so no fake pod address can ever lead traffic off this
	// machine (kwok's own default is 10.0.0.0/24), and clear of the
	// 127.0.0.x addresses that real local processes use. The price: the
	// apiserver refuses loopback addresses in EndpointSlices, so a Service
	// selecting kwok pods gets no endpoints (kcm logs why).
	PodCIDR string

	names []string
}

// Validate checks the shape and the binary before anything starts.
func (k *KwokNodes) Validate() error {
	if _, err := k.Shape.Nodes(); err != nil {
		return err
	}
	if _, err := os.Stat(k.Bin); err != nil {
		return fmt.Errorf("kwok binary: %w (make kube-bins installs it)", err)
	}
	return nil
}

// NodeNames lists the nodes of Shape.
func (k *KwokNodes) NodeNames() []string { return k.names }

// Start creates the nodes and starts kwok.
func (k *KwokNodes) Start(ctx context.Context, c *Cluster) error {
	shape := k.Shape
	shape.Annotations = map[string]string{KwokAnnotation: "fake"}
	for a, v := range k.Shape.Annotations {
		shape.Annotations[a] = v
	}
	nodes, err := shape.Nodes()
	if err != nil {
		return err
	}
	cidr := k.PodCIDR
	if cidr == "" {
		cidr = "127.128.0.0/9"
	}
	stages := filepath.Join(c.StateDir(), "kwok-stages.yaml")
	if err := os.WriteFile(stages, kwokStages, 0o644); err != nil {
		return fmt.Errorf("write kwok stages: %w", err)
	}
	// kwok first, nodes second: either order works (kwok watches), but
	// this way a kwok that cannot start fails before hundreds of creates.
	_, err = c.StartProcess("kwok", k.Bin,
		"--kubeconfig", c.Kubeconfig(),
		"--config", stages,
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector", KwokAnnotation+"=fake",
		// The address kwok reports for its nodes: loopback, nothing listens
		// there for kwok nodes (kubectl logs/exec just fail).
		"--node-ip", "127.0.0.1",
		"--cidr", cidr,
		"--node-lease-duration-seconds", "40",
	)
	if err != nil {
		return err
	}
	c.Logger().Info("creating nodes", "count", len(nodes), "gpus", shape.GPUs, "rack-size", shape.RackSize)
	if err := CreateNodes(ctx, c.Clientset(), nodes); err != nil {
		return err
	}
	k.names = make([]string, len(nodes))
	for i, n := range nodes {
		k.names[i] = n.Name
	}
	return nil
}

// Stop has nothing to release: kwok is a process the cluster stops.
func (k *KwokNodes) Stop() error { return nil }

// nodeReady reports whether a node is Ready and free of the taints the
// node lifecycle controller manages (not-ready, unreachable, ...), i.e.
// whether an ordinary pod could be scheduled there.
func nodeReady(n *corev1.Node) bool {
	ready := false
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			ready = c.Status == corev1.ConditionTrue
		}
	}
	if !ready || n.Spec.Unschedulable {
		return false
	}
	for _, t := range n.Spec.Taints {
		if t.Effect != corev1.TaintEffectPreferNoSchedule && strings.HasPrefix(t.Key, "node.kubernetes.io/") {
			return false
		}
	}
	return true
}
