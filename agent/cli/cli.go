// Package cli parses the agent's command line into an agent.Config.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/muster-dev/muster/agent"
	"github.com/muster-dev/muster/agent/preset"
	"github.com/muster-dev/muster/internal/logging"
	"github.com/muster-dev/muster/internal/version"
	"github.com/muster-dev/muster/podapi/names"
)

const usage = `Usage: agent run [flags] -- COMMAND [ARGS...]

Joins a muster group, waits until all --size members are there, then runs
COMMAND with its rank in the environment (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT, NODE_RANK, NNODES, LOCAL_RANK, MUSTER_* ...) and, for presets
such as torchrun, on its command line. ARGS may use {{.Rank}},
{{.WorldSize}}, {{.LeaderAddr}} and {{.Port}}.

When any member's runtime fails, every member stops its runtime and starts
it again with the same rank (MUSTER_GENERATION counts restarts). The agent
exits 0 when every rank exited 0, and forwards SIGTERM/SIGINT to COMMAND.

--runtime picks how COMMAND gets its rank (see "Runtime presets" below):
vllm, sglang, deepspeed and torchrun insert their launcher's multi-node
flags after the launcher (vllm serve MODEL, -m sglang.launch_server,
deepspeed, torchrun), ray starts a Ray cluster and runs COMMAND on the
leader only. The agent refuses a group the runtime cannot run before it
joins (vllm: tensor x pipeline parallel size against nodes x
--gpus-per-node), and warns about Kubernetes service-link variables such as
VLLM_PORT=tcp://... that the runtime would misread (fix:
enableServiceLinks: false).

In a pod the webhook sets every flag through the environment; on a bare
host pass them, e.g.:

  agent run --coordinator 127.0.0.1:7070 --group demo --size 2 \
      --member-id host-a --address 127.0.0.2 -- python3 train.py

Flags (environment variable defaults in brackets):
`

// Main runs the agent with args; it returns the process exit code.
func Main(ctx context.Context, args []string, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, "Usage: agent run [flags] -- COMMAND [ARGS...]\n       agent install DEST   (copy this binary to DEST; the webhook's init container uses it)\n\nRun `agent run --help` for the flags.\n")
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "-version" || args[0] == "version" {
		fmt.Fprintln(os.Stdout, version.Get().String("agent"))
		return 0
	}
	if args[0] == "install" {
		return install(args[1:], stderr)
	}
	if args[0] != "run" {
		fmt.Fprintf(stderr, "agent: unknown command %q; use \"run\" (see agent run --help) or \"install DEST\"\n", args[0])
		return 2
	}
	cfg, err := Parse(args[1:], stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "agent: %v\n", err)
		return 2
	}
	err = agent.Run(ctx, cfg)
	if err == nil {
		return 0
	}
	var ee *agent.ExitError
	code := 1
	if errors.As(err, &ee) {
		code = ee.Code
	}
	cfg.Logger.Error("agent exiting", "exit_code", code, "err", err.Error())
	return code
}

// Parse turns `agent run` arguments into a Config, with a Logger writing
// to stderr as --log-level and --log-format ask.
func Parse(args []string, stderr io.Writer) (agent.Config, error) {
	cfg := agent.DefaultConfig()
	fs := flag.NewFlagSet("agent run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
		fmt.Fprintf(stderr, "\nRuntime presets:\n")
		for _, n := range preset.Names() {
			p, _ := preset.Get(n)
			fmt.Fprintf(stderr, "  %-10s %s\n", n, p.Summary)
		}
	}
	coordinators := strings.Join(cfg.Coordinators, ",")
	var ordinal string
	var logFlags logging.Flags
	fs.StringVar(&coordinators, "coordinator", coordinators, "coordinator address host:port; several, comma-separated, for failover [MUSTER_COORDINATOR]")
	fs.StringVar(&cfg.Namespace, "namespace", cfg.Namespace, "namespace of the group [MUSTER_NAMESPACE, POD_NAMESPACE]")
	fs.StringVar(&cfg.Group, "group", cfg.Group, "group name, the same on every member [MUSTER_GROUP]")
	fs.IntVar(&cfg.Size, "size", envInt(names.EnvSize), "number of members (world size), the same on every member [MUSTER_SIZE]")
	fs.StringVar(&cfg.MemberID, "member-id", cfg.MemberID, "this member's stable id [MUSTER_MEMBER_ID, POD_NAME, host name]")
	fs.StringVar(&cfg.Address, "address", cfg.Address, "this member's IP address, where its runtime listens [MUSTER_ADDRESS, POD_IP]")
	fs.StringVar(&ordinal, "ordinal", envOrEmpty(names.EnvOrdinal), "rank hint: ranks follow ordinals in numeric order; empty orders by arrival [MUSTER_ORDINAL]")
	fs.StringVar(&cfg.Runtime, "runtime", cfg.Runtime, "runtime preset: "+strings.Join(preset.Names(), ", ")+" [MUSTER_RUNTIME]")
	fs.IntVar(&cfg.MasterPort, "master-port", envInt("MUSTER_MASTER_PORT"), "MASTER_PORT if this member leads; 0 picks a free port [MUSTER_MASTER_PORT]")
	fs.IntVar(&cfg.GPUsPerNode, "gpus-per-node", envInt(names.EnvGPUsPerNode), "GPUs of this member (the webhook sets it from the container's nvidia.com/gpu limit): vllm refuses a tensor x pipeline parallel size that does not match nodes x GPUs, deepspeed writes it as the hostfile's slots; 0: unknown, the vllm check is skipped [MUSTER_GPUS_PER_NODE]")
	fs.StringVar(&cfg.Interface, "interface", envOrEmpty("MUSTER_INTERFACE"), "network interface for collective communication, set as NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME for every runtime; empty: the libraries choose [MUSTER_INTERFACE]")
	fs.StringVar(&cfg.RankOrder, "rank-order", envOrEmpty(names.EnvRankOrder), "ordinal (default): ranks follow --ordinal; topology: members with the same --topology-domain get neighbouring ranks, ordinal 0 stays rank 0; the same on every member [MUSTER_RANK_ORDER]")
	fs.StringVar(&cfg.TopologyDomain, "topology-domain", envOrEmpty(names.EnvTopologyDomain), "where this member runs (a rack, a switch, a zone), for --rank-order topology; in a pod muster's scheduler writes it from the node's label [MUSTER_TOPOLOGY_DOMAIN]")
	fs.IntVar(&cfg.ReadyPort, "port", envInt(names.EnvPort), "serving port of the runtime: the leader reports ready once it accepts connections there; 0: ready once started [MUSTER_PORT]")
	fs.IntVar(&cfg.EndpointPort, "endpoint-port", envInt(names.EnvEndpointPort), "serve the group's endpoint here: the leader proxies to --port, other ranks to the leader; 503 until every rank is ready; 0: no endpoint [MUSTER_ENDPOINT_PORT]")
	fs.DurationVar(&cfg.ReadyTimeout, "ready-timeout", cfg.ReadyTimeout, "a runtime alive but not ready this long after launch counts as failed (the group restarts); 0 waits forever")
	fs.BoolVar(&cfg.NoGossip, "no-gossip", false, "do not gossip with peers (a lost member is then noticed only when its lease runs out: --member-ttl on the coordinator, counted from when the coordinator loses the member's connection: at once for a killed agent, up to 15s for a host cut off)")
	fs.DurationVar(&cfg.JoinTimeout, "join-timeout", cfg.JoinTimeout, "give up when the coordinator stays unreachable this long")
	fs.DurationVar(&cfg.StopGrace, "stop-grace", cfg.StopGrace, "time between SIGTERM and SIGKILL when stopping the runtime")
	fs.DurationVar(&cfg.EndpointIdleTimeout, "endpoint-idle-timeout", 0, "close an endpoint connection idle this long (0: 90s; negative: never)")
	fs.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", 0, "largest request body the endpoint forwards, larger gets 413 (0: 64 MiB; negative: no limit)")
	fs.DurationVar(&cfg.EndpointBodyTimeout, "endpoint-body-timeout", 0, "a request body must arrive within this, else 408 (0: 60s; negative: no limit); responses may stream for as long as they like")
	fs.StringVar(&cfg.CAFile, "ca", "", "verify the coordinator's TLS certificate with this CA (PEM); in a pod the webhook sets MUSTER_COORDINATOR_CA instead; empty: plaintext [MUSTER_COORDINATOR_CA holds the PEM itself]")
	fs.StringVar(&cfg.CertFile, "cert", "", "this member's client certificate (bare hosts; coordinator certs member makes one)")
	fs.StringVar(&cfg.KeyFile, "key", "", "the key of --cert")
	fs.StringVar(&cfg.TokenFile, "token-file", cfg.TokenFile, "send the token in this file with every call (in a pod: the projected service-account token) [MUSTER_TOKEN_FILE]")
	logFlags.Register(fs)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	cfg.Command = fs.Args()
	cfg.Coordinators = nil
	for _, c := range strings.Split(coordinators, ",") {
		if c = strings.TrimSpace(c); c != "" {
			cfg.Coordinators = append(cfg.Coordinators, c)
		}
	}
	if ordinal != "" {
		o, err := strconv.ParseInt(ordinal, 10, 64)
		if err != nil {
			return cfg, fmt.Errorf("--ordinal %q is not a whole number", ordinal)
		}
		cfg.Ordinal = &o
	}
	log, err := logFlags.New(stderr)
	if err != nil {
		return cfg, err
	}
	cfg.Logger = log
	return cfg, cfg.Validate()
}

func envOrEmpty(k string) string {
	return strings.TrimSpace(lookupEnv(k))
}

// envInt reads an integer default from the environment; a malformed value
// is left for Validate to report through the flag it feeds.
func envInt(k string) int {
	v, err := strconv.Atoi(strings.TrimSpace(lookupEnv(k)))
	if err != nil {
		return 0
	}
	return v
}
