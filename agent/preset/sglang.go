package preset

import (
	"fmt"
	"net"
	"strconv"
)

// sglangPortSpan is the block of ports SGLang binds on the leader from the
// --dist-init-addr port P up: P itself (torch.distributed's store), with
// data-parallel attention P+1..P+6 (PortArgs.init_new: port_base = P+1 for
// the tokenizer, detokenizer, rpc, metrics, scheduler input and load
// collector sockets) and P+13 (DP_ATTENTION_HANDSHAKE_PORT_DELTA, where
// node 0 hands the worker ports to the other nodes). Sources:
// sgl-project/sglang python/sglang/srt/server_args.py (PortArgs.init_new,
// ZMQ_TCP_PORT_DELTA, DP_ATTENTION_HANDSHAKE_PORT_DELTA = 13) and
// python/sglang/srt/managers/data_parallel_controller.py
// (_broadcast_worker_ports). The agent keeps P..P+13 free when it picks
// MASTER_PORT; a --master-port given by hand must leave them free too.
const sglangPortSpan = 14

// The sglang preset adds SGLang's multi-node flags: --nnodes N --node-rank R
// --dist-init-addr A:P, the same on every node but the rank; node 0 serves
// the API. Source: https://docs.sglang.io/references/multi_node_deployment/multi_node.html
// ("python3 -m sglang.launch_server --model-path ... --tp 16 --dist-init-addr
// 172.16.4.52:20000 --nnodes 2 --node-rank 0") and the flags in
// python/sglang/srt/server_args.py. They go after `-m sglang.launch_server`
// or `sglang serve`, else at the end (SGLang's parser has no positional
// arguments).
func init() {
	Register(Preset{
		Name:        "sglang",
		Summary:     fmt.Sprintf("sglang.launch_server / sglang serve: adds --nnodes --node-rank --dist-init-addr A:P; ports P..P+%d stay free", sglangPortSpan-1),
		Args:        sglangArgs,
		Check:       sglangCheck,
		PortSpan:    sglangPortSpan,
		EnvPrefixes: []string{"SGLANG_"},
	})
}

func sglangCheck(_ Assignment, argv []string) (string, error) {
	for _, f := range []string{"--nnodes", "--node-rank", "--dist-init-addr"} {
		if hasFlag(argv, f) {
			return "", fmt.Errorf("the command sets %s, which the preset sets from the assignment; remove it", f)
		}
	}
	return "", nil
}

func sglangArgs(a Assignment, argv []string) ([]string, error) {
	at := len(argv)
	if i := moduleIndex(argv, "sglang.launch_server"); i >= 0 {
		at = i + 1
	} else if i := subcommandIndex(argv, "sglang", "serve"); i >= 0 {
		at = i + 1
	}
	return insertAfter(argv, at,
		"--nnodes", strconv.Itoa(a.WorldSize),
		"--node-rank", strconv.Itoa(a.Rank),
		"--dist-init-addr", net.JoinHostPort(a.LeaderAddr, strconv.Itoa(a.Port)),
	), nil
}
