// Package podapi is muster's pod contract: every label, annotation,
// condition and environment variable muster reads from or writes to a pod,
// the runtime presets a pod may name, how names, sizes and addresses are
// validated, and how a pod's group fields are read. The scheduler, the
// webhook, the coordinator and the agent take these names from here and
// from nowhere else; podapi imports no other package of muster.
package podapi

import (
	v1 "k8s.io/api/core/v1"
)

// The labels and annotations a user puts on a group's pods (docs/design.md
// lists them). The scheduler, the webhook and the agent read them from here.
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
	// AnnotationOrdinal is a member's rank hint when its workload gives it
	// no index (a Deployment's pods): members with a hint take the low
	// ranks in its order, the others follow in order of arrival.
	AnnotationOrdinal = "muster.dev/ordinal"
	// AnnotationInject "true" asks the webhook for the agent. A workload's
	// labels alone make a group only for pods that ask (KServe's).
	AnnotationInject = "muster.dev/inject"
	// AnnotationRuntime names the runtime preset (one of names.Runtimes);
	// names.DefaultRuntime when absent.
	AnnotationRuntime = "muster.dev/runtime"
	// AnnotationPort is the runtime's serving port, where the agent's
	// endpoint forwards.
	AnnotationPort = "muster.dev/port"
	// AnnotationEndpointPort is the agent's endpoint port.
	AnnotationEndpointPort = "muster.dev/endpoint-port"
	// AnnotationContainer names the container the agent wraps; default
	// the first.
	AnnotationContainer = "muster.dev/container"
	// AnnotationInjected is set by the webhook on a pod it has injected.
	AnnotationInjected = "muster.dev/injected"
)

// RankOrderOrdinal, the default, ranks members by their ordinal.
const RankOrderOrdinal = "ordinal"

// RankOrders are the values muster.dev/rank-order accepts.
var RankOrders = []string{RankOrderOrdinal, RankOrderTopology}

// ConditionGroupReady is the pod condition, and the readiness gate the
// webhook adds, that the coordinator sets True once the pod's group is
// ready: a Service then sends to the pod.
const ConditionGroupReady v1.PodConditionType = "muster.dev/group-ready"

// ResourceGPU is the extended resource whose limit says how many GPUs a
// member has (names.EnvGPUsPerNode).
const ResourceGPU = v1.ResourceName("nvidia.com/gpu")

// LeaderWorkerSet (sigs.k8s.io/lws v0.7.0, api/leaderworkerset/v1) labels
// and annotations: every pod of one LWS group carries the set's name and
// the group's index, and the group size.
const (
	LabelLWSName       = "leaderworkerset.sigs.k8s.io/name"
	LabelLWSGroupIndex = "leaderworkerset.sigs.k8s.io/group-index"
	AnnotationLWSSize  = "leaderworkerset.sigs.k8s.io/size"
)

// KServe (github.com/kserve/kserve v0.17, pkg/constants) labels the pods of
// a multi-node InferenceService in Standard (RawDeployment) mode: the head
// Deployment <isvc>-predictor (app=isvc.<isvc>-predictor, one pod) and the
// worker Deployment <isvc>-predictor-worker (RAY_NODE_COUNT-1 pods) carry
// the InferenceService's name, component=predictor and its generation.
// KServe sets the pod count as RAY_NODE_COUNT in both pods' containers.
const (
	LabelKServeInferenceService = "serving.kserve.io/inferenceservice"
	LabelKServeGeneration       = "isvc.generation"
	LabelKServeComponent        = "component"
	LabelKServeApp              = "app"
	EnvKServeNodeCount          = "RAY_NODE_COUNT"
)

// Key identifies a group: group names are scoped by namespace.
type Key struct {
	Namespace string
	Name      string
}

func (k Key) String() string { return k.Namespace + "/" + k.Name }
