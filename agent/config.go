// Package agent is muster's in-pod (or on-host) agent: it joins the
// rendezvous, waits at the barrier, launches the runtime with its rank, and
// restarts it in place whenever the group moves to a new generation.
package agent

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/muster-dev/muster/agent/preset"
	"github.com/muster-dev/muster/podapi/names"
)

// Config is the agent's configuration; DefaultConfig fills the defaults.
type Config struct {
	// Coordinators are coordinator replica addresses (host:port); the agent
	// moves to the next one when its replica becomes unreachable.
	Coordinators []string
	Namespace    string
	Group        string
	Size         int
	// MemberID is stable across restarts of this member (pod or host name).
	MemberID string
	// Address is where this member's runtime listens (pod or host IP).
	Address string
	// Ordinal is the rank hint (pod index); nil orders by arrival.
	Ordinal *int64
	Runtime string
	// MasterPort is the port the runtime's rendezvous uses if this member
	// leads; 0 picks a free port on Address (with the ports the preset
	// derives from it free as well).
	MasterPort int
	// GPUsPerNode is the number of GPUs this member has, for the presets
	// that size the group by it (vllm checks tensor x pipeline parallel
	// size, deepspeed writes it as the hostfile's slots); 0 is unknown.
	GPUsPerNode int
	// Interface, when set, names the network interface collective
	// communication uses (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME).
	Interface string
	// RankOrder is "ordinal" (default) or "topology": members reporting
	// the same TopologyDomain get neighbouring ranks, ordinal 0 stays rank 0.
	RankOrder string
	// TopologyDomain is where this member runs (e.g. its rack), for
	// RankOrder topology; in a pod muster's scheduler writes it.
	TopologyDomain string
	// Dir is where the agent writes the files a preset generates (a
	// hostfile, a script); empty uses a directory per member under the
	// system's temporary directory.
	Dir string
	// ReadyPort, when set, makes the leader report ready only once its
	// runtime accepts TCP connections on Address:ReadyPort.
	ReadyPort int
	// EndpointPort, when set together with ReadyPort, makes the agent serve
	// the group's endpoint on Address:EndpointPort: the leader proxies to
	// its runtime's ReadyPort, the others to the leader's endpoint. Without
	// a ReadyPort (a batch job) there is nothing to serve and no endpoint.
	EndpointPort int
	// ReadyTimeout, when set, counts a runtime that is alive but not ready
	// this long after launch as failed: it is stopped and the group restarts.
	ReadyTimeout time.Duration
	// NoGossip turns off gossip between the group's agents; a lost member
	// is then noticed when its lease runs out.
	NoGossip bool
	// JoinTimeout bounds how long the coordinator may stay unreachable.
	JoinTimeout time.Duration
	// StopGrace is the time between SIGTERM and SIGKILL when stopping the
	// runtime for a restart.
	StopGrace time.Duration
	// Command is the runtime command line.
	Command []string

	Stdout, Stderr io.Writer
	Logger         *slog.Logger
	// EndpointIdleTimeout, MaxBodyBytes and EndpointBodyTimeout bound the
	// endpoint's clients (0: proxy's defaults, negative: no limit): idle
	// keep-alive connections are closed, bodies over the size get 413,
	// bodies slower than the timeout get 408.
	EndpointIdleTimeout time.Duration
	MaxBodyBytes        int64
	EndpointBodyTimeout time.Duration
	// CAFile (or CAPEM, the PEM itself, as the webhook injects it)
	// verifies the coordinator's TLS certificate; with neither the
	// connection is plaintext.
	CAFile, CAPEM string
	// CertFile and KeyFile are this member's client certificate (bare
	// hosts: coordinator certs member).
	CertFile, KeyFile string
	// TokenFile holds a token sent with every call (in a pod: the
	// projected service-account token the webhook mounts).
	TokenFile string
	// DialOptions are extra gRPC dial options (credentials, interceptors);
	// without any the connection is plaintext.
	DialOptions []grpc.DialOption
}

// DefaultConfig reads defaults from the environment a pod gets from the
// webhook (downward API), so that flags are only needed on bare hosts.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	c := Config{
		Coordinators: splitList(envOr(names.EnvCoordinator, "127.0.0.1:7070")),
		Namespace:    envOr(names.EnvNamespace, envOr("POD_NAMESPACE", "default")),
		Group:        os.Getenv(names.EnvGroup),
		MemberID:     envOr(names.EnvMemberID, envOr("POD_NAME", host)),
		Address:      envOr(names.EnvAddress, envOr("POD_IP", "127.0.0.1")),
		Runtime:      envOr(names.EnvRuntime, names.DefaultRuntime),
		CAPEM:        os.Getenv(names.EnvCoordinatorCA),
		TokenFile:    os.Getenv(names.EnvTokenFile),
		JoinTimeout:  5 * time.Minute,
		StopGrace:    10 * time.Second,
		Stdout:       os.Stdout,
		Stderr:       os.Stderr,
	}
	return c
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Validate checks the configuration and names the first bad field.
func (c *Config) Validate() error {
	_, err := c.validate()
	return err
}

// validate is Validate that also returns the preset of c.Runtime, so that
// Run looks it up once and passes it along.
func (c *Config) validate() (preset.Preset, error) {
	if len(c.Coordinators) == 0 {
		return preset.Preset{}, errors.New("--coordinator is empty: give the coordinator's host:port")
	}
	for _, a := range c.Coordinators {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return preset.Preset{}, fmt.Errorf("--coordinator %q: want host:port: %v", a, err)
		}
	}
	if err := names.ValidateName("--namespace", c.Namespace, names.MaxGroupNameLen); err != nil {
		return preset.Preset{}, err
	}
	if err := names.ValidateName("--group", c.Group, names.MaxGroupNameLen); err != nil {
		return preset.Preset{}, err
	}
	if err := names.ValidateSize(c.Size); err != nil {
		return preset.Preset{}, fmt.Errorf("--size: %w", err)
	}
	if err := names.ValidateName("--member-id", c.MemberID, names.MaxMemberIDLen); err != nil {
		return preset.Preset{}, err
	}
	if err := names.ValidateAddress(c.Address); err != nil {
		return preset.Preset{}, fmt.Errorf("--address: %w", err)
	}
	if c.Ordinal != nil && *c.Ordinal < 0 {
		return preset.Preset{}, fmt.Errorf("--ordinal %d is negative; ordinals count from 0", *c.Ordinal)
	}
	p, err := preset.Get(c.Runtime)
	if err != nil {
		return preset.Preset{}, fmt.Errorf("--runtime: %w", err)
	}
	if c.MasterPort < 0 || c.MasterPort > 65535 {
		return preset.Preset{}, fmt.Errorf("--master-port %d is not a TCP port (0 picks a free one)", c.MasterPort)
	}
	if c.GPUsPerNode < 0 {
		return preset.Preset{}, fmt.Errorf("--gpus-per-node %d is negative (0 means unknown)", c.GPUsPerNode)
	}
	switch c.RankOrder {
	case "", "ordinal", "topology":
	default:
		return preset.Preset{}, fmt.Errorf("--rank-order %q: want ordinal (ranks follow ordinals) or topology (members of one --topology-domain get neighbouring ranks)", c.RankOrder)
	}
	if strings.ContainsAny(c.Interface, " \t\n") {
		return preset.Preset{}, fmt.Errorf("--interface %q: want an interface name such as eth0, without spaces (NCCL also takes a prefix, =exact, ^excluded or a comma list)", c.Interface)
	}
	if c.ReadyPort < 0 || c.ReadyPort > 65535 {
		return preset.Preset{}, fmt.Errorf("--port %d is not a TCP port", c.ReadyPort)
	}
	if c.EndpointPort < 0 || c.EndpointPort > 65535 {
		return preset.Preset{}, fmt.Errorf("--endpoint-port %d is not a TCP port", c.EndpointPort)
	}
	if c.EndpointPort > 0 && c.EndpointPort == c.ReadyPort {
		return preset.Preset{}, fmt.Errorf("--endpoint-port and --port are both %d: the agent's endpoint and the runtime need different ports", c.EndpointPort)
	}
	if c.ReadyTimeout < 0 {
		return preset.Preset{}, fmt.Errorf("--ready-timeout %s is negative (0 waits forever)", c.ReadyTimeout)
	}
	if c.JoinTimeout <= 0 {
		return preset.Preset{}, fmt.Errorf("--join-timeout %s must be positive", c.JoinTimeout)
	}
	if c.StopGrace < 0 {
		return preset.Preset{}, fmt.Errorf("--stop-grace %s is negative", c.StopGrace)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return preset.Preset{}, errors.New("--cert and --key go together: give both (this member's client certificate and key) or neither")
	}
	if len(c.Command) == 0 {
		return preset.Preset{}, errors.New("no command: put the runtime's command after --, e.g. agent run --group g --size 2 -- python3 train.py")
	}
	return p, nil
}
