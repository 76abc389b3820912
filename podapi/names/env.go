// Package names holds the parts of muster's pod contract (package podapi)
// that need no Kubernetes types: the environment the webhook gives the
// agent, the runtime presets a pod may name, and how group, namespace and
// member names, sizes and addresses are validated. The agent imports this
// package, not podapi, so that its binary, which the webhook copies into
// every pod, does not link Kubernetes' API types.
package names

// DefaultRuntime is the preset used when muster.dev/runtime is absent.
const DefaultRuntime = "env"

// Runtimes are the presets muster.dev/runtime may name; the agent has one
// preset of each name (agent/preset tests that the two lists agree).
var Runtimes = []string{"env", "torchrun", "vllm", "sglang", "deepspeed", "ray"}

// The environment the webhook gives the agent's container. The agent reads
// each as the default of its flag of the same name, except EnvNodeName and
// EnvTimeout, which only the runtime (it inherits the environment) and a
// person reading the pod see.
const (
	EnvCoordinator    = "MUSTER_COORDINATOR"    // host:port[,host:port...]
	EnvCoordinatorCA  = "MUSTER_COORDINATOR_CA" // PEM the coordinator's certificate chains to
	EnvTokenFile      = "MUSTER_TOKEN_FILE"     // the projected service-account token
	EnvNamespace      = "MUSTER_NAMESPACE"
	EnvGroup          = "MUSTER_GROUP"
	EnvSize           = "MUSTER_SIZE"
	EnvMemberID       = "MUSTER_MEMBER_ID" // the pod's name
	EnvAddress        = "MUSTER_ADDRESS"   // the pod's IP
	EnvNodeName       = "MUSTER_NODE_NAME"
	EnvOrdinal        = "MUSTER_ORDINAL"
	EnvRuntime        = "MUSTER_RUNTIME"
	EnvPort           = "MUSTER_PORT"
	EnvEndpointPort   = "MUSTER_ENDPOINT_PORT"
	EnvTimeout        = "MUSTER_TIMEOUT"
	EnvGPUsPerNode    = "MUSTER_GPUS_PER_NODE"
	EnvRankOrder      = "MUSTER_RANK_ORDER"
	EnvTopologyDomain = "MUSTER_TOPOLOGY_DOMAIN"
)
