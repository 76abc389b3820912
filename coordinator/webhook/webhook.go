// Package webhook is muster's mutating admission webhook: for pods annotated
// muster.dev/inject: "true" it checks the group annotations and injects the
// agent (an init container that installs it, the main container's command
// wrapped as `agent run -- ...`, downward-API env, a service-account token
// for the coordinator, muster's scheduler and a readiness gate);
// docs/design.md (the pod contract) says what a pod gets.
package webhook

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	spclientset "sigs.k8s.io/scheduler-plugins/pkg/generated/clientset/versioned"

	"github.com/muster-dev/muster/coordinator/auth"
	"github.com/muster-dev/muster/podapi"
	"github.com/muster-dev/muster/podapi/names"
)

// What the webhook adds to a pod. The process node that runs pods and the
// agent rely on these names.
const (
	VolumeName        = "muster-bin"
	InitContainerName = "muster-agent-install"
	BinDir            = "/muster/bin"
	AgentPath         = BinDir + "/agent"
	// ImageAgentPath is where the agent image keeps the binary it installs.
	ImageAgentPath = "/muster/agent"
	// PortName names the main container's port for the agent's endpoint.
	PortName = "muster"
)

// The agent's credentials: a projected service-account token, bound to
// the pod, that the agent reads before each call to the coordinator and
// sends as a bearer token; the coordinator reviews it (TokenReview) and
// takes the caller's namespace and member ID from the pod it names, not
// from what the agent says.
const (
	// TokenVolumeName is the pod volume holding the token; the name is
	// reserved (the webhook denies pods with a volume of their own by it).
	TokenVolumeName = "muster-token"
	// TokenDir is where the agent's container mounts it, read-only.
	TokenDir = "/var/run/secrets/muster.dev"
	// TokenPath is the token's file in the volume.
	TokenPath = "token"
	// TokenFile is the token as the agent reads it (MUSTER_TOKEN_FILE).
	TokenFile = TokenDir + "/" + TokenPath
	// DefaultTokenAudience is the audience the coordinator's TokenReview
	// asks for by default.
	DefaultTokenAudience = auth.DefaultAudience
	// DefaultTokenExpiration is the shortest lifetime the apiserver
	// grants; the kubelet replaces the token once 80% of it has passed.
	DefaultTokenExpiration = 10 * time.Minute
)

// Bounds the apiserver puts on a projected token's expirationSeconds.
const (
	minTokenExpiration = 10 * time.Minute
	maxTokenExpiration = 1 << 32 * time.Second
)

// SizeLookup finds the size of a group whose pods carry no muster.dev/size,
// from the PodGroup of the same name; found is false when there is none.
type SizeLookup = func(ctx context.Context, namespace, group string) (size int, found bool, err error)

// Config is the webhook's configuration; DefaultConfig fills it.
type Config struct {
	// CoordinatorAddress is what the agents dial (MUSTER_COORDINATOR):
	// host:port, several comma-separated for failover.
	CoordinatorAddress string
	// AgentImage holds the agent at /muster/agent; the init container
	// copies it into the pod.
	AgentImage string
	// SchedulerName is set on pods that do not name a scheduler of their own.
	SchedulerName string
	// Runtimes are the presets muster.dev/runtime may name; empty:
	// names.Runtimes, every preset the agent has.
	Runtimes []string
	// EndpointPort is the agent's endpoint port when a pod does not set
	// muster.dev/endpoint-port.
	EndpointPort int
	// SizeLookup, if set, sizes groups named by the label
	// scheduling.x-k8s.io/pod-group that have no muster.dev/size (see
	// PodGroupSizes). Without it such pods are denied.
	SizeLookup SizeLookup
	// GangLookup, if set, reads the scheduling.k8s.io PodGroup that pods
	// name in spec.schedulingGroup (see UpstreamPodGroups). Without it such
	// pods need muster.dev/size.
	GangLookup GangLookup
	// TokenAudience is the audience of the service-account token projected
	// for the agent (DefaultTokenAudience); the coordinator's TokenReview
	// must ask for the same. Never one the apiserver accepts: the token
	// would then be good for the Kubernetes API too.
	TokenAudience string
	// TokenExpiration is the token's lifetime (expirationSeconds; whole
	// seconds, at least 10m as the apiserver requires).
	TokenExpiration time.Duration
	// CoordinatorCA, if set, is the PEM of the certificates the agents
	// verify the coordinator's TLS certificate with
	// (MUSTER_COORDINATOR_CA). CA certificates are public, so an env var
	// carries them; no secret or volume is needed.
	CoordinatorCA []byte
}

// Gang is what muster reads from an upstream PodGroup.
type Gang = podapi.Gang

// GangLookup finds the upstream PodGroup a pod names.
type GangLookup = func(ctx context.Context, namespace, name string) (g Gang, found bool, err error)

// UpstreamPodGroups is a GangLookup that reads podgroups.scheduling.k8s.io
// (Kubernetes 1.37, GenericWorkload), as kube-scheduler does.
func UpstreamPodGroups(cs kubernetes.Interface) GangLookup {
	return func(ctx context.Context, namespace, name string) (Gang, bool, error) {
		pg, err := cs.SchedulingV1beta1().PodGroups(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return Gang{}, false, nil
		}
		if err != nil {
			return Gang{}, false, fmt.Errorf("get PodGroup %s/%s: %w", namespace, name, err)
		}
		var g Gang
		if gp := pg.Spec.SchedulingPolicy.Gang; gp != nil {
			g.MinCount = int(gp.MinCount)
		}
		if c := pg.Spec.SchedulingConstraints; c != nil && len(c.Topology) > 0 {
			g.TopologyKey = c.Topology[0].Key
		}
		return g, true, nil
	}
}

// DefaultConfig is the configuration for one machine: the coordinator's
// default address and every runtime preset.
func DefaultConfig() Config {
	return Config{
		CoordinatorAddress: "127.0.0.1:7070",
		AgentImage:         "muster/agent:dev",
		SchedulerName:      "muster-scheduler",
		Runtimes:           names.Runtimes,
		EndpointPort:       8080,
		TokenAudience:      DefaultTokenAudience,
		TokenExpiration:    DefaultTokenExpiration,
	}
}

// Validate checks the configuration and names the first bad field.
func (c Config) Validate() error {
	if strings.TrimSpace(c.CoordinatorAddress) == "" {
		return errors.New("CoordinatorAddress is empty: agents need the coordinator's host:port")
	}
	for _, a := range strings.Split(c.CoordinatorAddress, ",") {
		if _, _, err := net.SplitHostPort(strings.TrimSpace(a)); err != nil {
			return fmt.Errorf("CoordinatorAddress %q: want host:port[,host:port...]: %w", c.CoordinatorAddress, err)
		}
	}
	if strings.TrimSpace(c.AgentImage) == "" {
		return errors.New("AgentImage is empty: the init container needs the agent's image")
	}
	if msgs := validation.IsDNS1123Subdomain(c.SchedulerName); len(msgs) > 0 {
		return fmt.Errorf("SchedulerName %q: %s", c.SchedulerName, strings.Join(msgs, "; "))
	}
	if !slices.Contains(c.Runtimes, names.DefaultRuntime) {
		return fmt.Errorf("the Runtimes %q must include %q, the preset of pods that name none", c.Runtimes, names.DefaultRuntime)
	}
	if msgs := validation.IsValidPortNum(c.EndpointPort); len(msgs) > 0 {
		return fmt.Errorf("EndpointPort %d: %s", c.EndpointPort, strings.Join(msgs, "; "))
	}
	if strings.TrimSpace(c.TokenAudience) == "" {
		// The apiserver would then issue tokens for its own audience:
		// good for the Kubernetes API, refused by the coordinator.
		return fmt.Errorf("TokenAudience is empty: set the audience the coordinator's TokenReview asks for (default %q)", DefaultTokenAudience)
	}
	if d := c.TokenExpiration; d < minTokenExpiration || d > maxTokenExpiration || d%time.Second != 0 {
		return fmt.Errorf("TokenExpiration %s: want whole seconds from %s to 2^32s (the apiserver's bounds on expirationSeconds)", d, minTokenExpiration)
	}
	if len(c.CoordinatorCA) > 0 {
		if err := checkCertsPEM(c.CoordinatorCA); err != nil {
			return fmt.Errorf("CoordinatorCA: %w", err)
		}
	}
	return nil
}

// checkCertsPEM checks that data is one or more PEM certificates, as a TLS
// client's root pool wants them. Text between the blocks (the comments of
// a CA bundle) is allowed; any other block, such as a private key, is not.
func checkCertsPEM(data []byte) error {
	n := 0
	for rest := data; ; n++ {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %d is a %s: want CERTIFICATE blocks only (the CA's certificates, never a key)", n+1, b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("PEM block %d: %w", n+1, err)
		}
	}
	if n == 0 {
		return errors.New("no PEM certificate: want the PEM text of the CA that signed the coordinator's certificate (-----BEGIN CERTIFICATE-----...), not a file name")
	}
	return nil
}

// PodGroupSizes is a SizeLookup that reads minMember from scheduler-plugins
// PodGroups (podgroups.scheduling.x-k8s.io), as the scheduler does.
func PodGroupSizes(cs spclientset.Interface) SizeLookup {
	return func(ctx context.Context, namespace, group string) (int, bool, error) {
		pg, err := cs.SchedulingV1alpha1().PodGroups(namespace).Get(ctx, group, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, fmt.Errorf("get PodGroup %s/%s: %w", namespace, group, err)
		}
		return int(pg.Spec.MinMember), true, nil
	}
}
