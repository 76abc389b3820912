package preset

import (
	"fmt"
	"strconv"
)

// The vllm preset runs one `vllm serve` per member, in one of two forms.
//
// Default (one model spread over the nodes, multiprocessing backend): every
// rank gets --nnodes N --node-rank R --master-addr A --master-port P, and
// ranks above 0 also --headless: they run only the model's workers while
// rank 0 serves the API. Sources: vllm-project/vllm vllm/config/parallel.py
// (ParallelConfig.nnodes, node_rank, master_addr, master_port: "for
// multi-node distributed inference when distributed_executor_backend is
// mp"), vllm/engine/arg_utils.py (the flags, with -n and -r), and
// vllm/entrypoints/openai/cli_args.py (--headless) with
// vllm/entrypoints/cli/serve.py (run_headless: "Run headless workers (for
// multi-node PP/TP)"). vLLM's guide sets tensor x pipeline parallel size to
// the GPUs of all nodes: docs/serving/parallelism_scaling.md.
//
// Data parallel, chosen when the command asks for a data-parallel size
// above 1 (--data-parallel-size/-dp): the D ranks are spread evenly, D/N per
// node, and every rank gets --data-parallel-address A
// --data-parallel-rpc-port P (plus --data-parallel-size-local D/N when not
// given); ranks above 0 add --headless --data-parallel-start-rank R x D/N.
// Source: https://docs.vllm.ai/en/latest/serving/data_parallel_deployment.html
// (docs/serving/data_parallel_deployment.md, "Internal Load Balancing":
// node 1 runs `--headless --data-parallel-size 4 --data-parallel-size-local
// 2 --data-parallel-start-rank 2`).
//
// VLLM_HOST_IP is the member's own address: vllm/envs.py "used in
// distributed environment to determine the ip address of the current node
// ... you should set this differently on each node"
// (https://docs.vllm.ai/en/stable/serving/env_vars.html).
//
// The flags go after `vllm serve MODEL` (also `python -m
// vllm.entrypoints.cli.main serve MODEL`), after `-m
// vllm.entrypoints.openai.api_server`, or else at the end (argparse takes
// options anywhere). That module parses --headless (the same
// make_arg_parser) but always starts an API server (its __main__ calls
// run_server), so on ranks above 0 it is replaced by
// `vllm.entrypoints.cli.main serve`, the module behind the `vllm` command,
// which honours --headless.
func init() {
	Register(Preset{
		Name:        "vllm",
		Summary:     "vllm serve: --nnodes --node-rank --master-addr --master-port (--headless above rank 0), or the data-parallel flags with -dp; VLLM_HOST_IP",
		Args:        vllmArgs,
		Env:         func(a Assignment) map[string]string { return map[string]string{"VLLM_HOST_IP": a.Address} },
		Check:       vllmCheck,
		EnvPrefixes: []string{"VLLM_"},
	})
}

// vllmOwned are the flags the preset sets; a command that sets them too
// would fight it (argparse keeps the last one).
var vllmOwned = [][]string{
	{"--nnodes", "-n"}, {"--node-rank", "-r"}, {"--master-addr"}, {"--master-port"}, {"--headless"},
	{"--data-parallel-address", "-dpa"}, {"--data-parallel-rpc-port", "-dpp"},
	{"--data-parallel-start-rank", "-dpr"}, {"--data-parallel-rank", "-dpn"},
}

// vllmDP is the data-parallel layout the command asks for.
type vllmDP struct {
	size, local int
	localGiven  bool
}

func (d vllmDP) on() bool { return d.size > 1 }

func parseVLLMDP(argv []string, nodes int) (vllmDP, error) {
	size, err := flagInt(argv, 1, "--data-parallel-size", "-dp")
	if err != nil || size <= 1 {
		return vllmDP{size: 1, local: 1}, err
	}
	if size%nodes != 0 {
		return vllmDP{}, fmt.Errorf("data-parallel-size %d does not split evenly over %d nodes: each node runs data-parallel-size/nodes ranks", size, nodes)
	}
	d := vllmDP{size: size, local: size / nodes}
	if v, ok := flagValue(argv, "--data-parallel-size-local", "-dpl"); ok {
		local, err := strconv.Atoi(v)
		if err != nil {
			return vllmDP{}, fmt.Errorf("--data-parallel-size-local %q is not a whole number", v)
		}
		if local != d.local {
			return vllmDP{}, fmt.Errorf("--data-parallel-size-local %d, but data-parallel-size %d over %d nodes is %d per node", local, size, nodes, d.local)
		}
		d.localGiven = true
	}
	return d, nil
}

func vllmCheck(a Assignment, argv []string) (string, error) {
	for _, names := range vllmOwned {
		if hasFlag(argv, names...) {
			return "", fmt.Errorf("the command sets %s, which the preset sets from the assignment; remove it", names[0])
		}
	}
	tp, err := flagInt(argv, 1, "--tensor-parallel-size", "-tp")
	if err != nil {
		return "", err
	}
	pp, err := flagInt(argv, 1, "--pipeline-parallel-size", "-pp")
	if err != nil {
		return "", err
	}
	dp, err := parseVLLMDP(argv, a.WorldSize)
	if err != nil {
		return "", err
	}
	if a.GPUsPerNode == 0 {
		return "GPUs per node unknown (--gpus-per-node, MUSTER_GPUS_PER_NODE): tensor x pipeline parallel size not checked against the group", nil
	}
	need, have := tp*pp*dp.size, a.WorldSize*a.GPUsPerNode
	if need == have {
		return "", nil
	}
	sizes := fmt.Sprintf("tensor-parallel-size %d x pipeline-parallel-size %d", tp, pp)
	if dp.on() {
		sizes += fmt.Sprintf(" x data-parallel-size %d", dp.size)
	}
	return "", fmt.Errorf("%s = %d GPUs, but the group has %d nodes x %d GPUs per node = %d", sizes, need, a.WorldSize, a.GPUsPerNode, have)
}

func vllmArgs(a Assignment, argv []string) ([]string, error) {
	dp, err := parseVLLMDP(argv, a.WorldSize)
	if err != nil {
		return nil, err
	}
	port := strconv.Itoa(a.Port)
	var flags []string
	if dp.on() {
		flags = []string{"--data-parallel-address", a.LeaderAddr, "--data-parallel-rpc-port", port}
		if !dp.localGiven {
			flags = append(flags, "--data-parallel-size-local", strconv.Itoa(dp.local))
		}
		if a.Rank > 0 {
			flags = append(flags, "--headless", "--data-parallel-start-rank", strconv.Itoa(a.Rank*dp.local))
		}
	} else {
		flags = []string{"--nnodes", strconv.Itoa(a.WorldSize), "--node-rank", strconv.Itoa(a.Rank), "--master-addr", a.LeaderAddr, "--master-port", port}
		if a.Rank > 0 {
			flags = append(flags, "--headless")
		}
	}
	if i := moduleIndex(argv, "vllm.entrypoints.openai.api_server"); i >= 0 && a.Rank > 0 {
		argv = append(append(append([]string{}, argv[:i]...), "vllm.entrypoints.cli.main", "serve"), argv[i+1:]...)
	}
	return insertAfter(argv, vllmFlagsAt(argv), flags...), nil
}

// vllmFlagsAt is where the preset's flags go in argv; see the preset's
// comment.
func vllmFlagsAt(argv []string) int {
	serve := subcommandIndex(argv, "vllm", "serve")
	if i := moduleIndex(argv, "vllm.entrypoints.cli.main"); i >= 0 && i+1 < len(argv) && argv[i+1] == "serve" {
		serve = i + 1
	}
	if serve >= 0 {
		at := serve + 1
		if at < len(argv) && len(argv[at]) > 0 && argv[at][0] != '-' {
			at++ // the model
		}
		return at
	}
	if i := moduleIndex(argv, "vllm.entrypoints.openai.api_server"); i >= 0 {
		return i + 1
	}
	return len(argv)
}
