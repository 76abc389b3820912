package preset

import (
	"path/filepath"
	"strconv"
	"strings"
)

// The torchrun preset adds the static-rendezvous flags of torchrun
// (torch.distributed.run): --nnodes, --node-rank, --master-addr and
// --master-port. With them torchrun uses its static rendezvous, so every
// node starts at once from muster's barrier instead of its own.
// Source: https://pytorch.org/docs/stable/elastic/run.html and
// torch/distributed/run.py. torch 2.x accepts "--node-rank" and
// "--node_rank" alike, but torch 1.13 (Debian's) knows only the underscored
// spellings, so those are what we pass: they work on every version.
//
// The flags go right after the launcher: after the first argument whose
// base name starts with "torchrun" ("torchrun", "/usr/bin/torchrun", or
// "python3 torchrun_wrapper.py"), after "-m torch.distributed.run", or
// else after argv[0] (a wrapper that execs torchrun with "$@").
// RANK and WORLD_SIZE are not set: torchrun computes them per worker.
func init() {
	Register(Preset{
		Name:        "torchrun",
		Summary:     "torchrun/torch.distributed.run: adds --nnodes --node_rank --master_addr --master_port",
		EnvPrefixes: []string{"TORCH_", "NCCL_"},
		Args: func(a Assignment, argv []string) ([]string, error) {
			at := 1
			for i := 0; i < len(argv); i++ {
				if strings.HasPrefix(filepath.Base(argv[i]), "torchrun") {
					at = i + 1
					break
				}
				if argv[i] == "-m" && i+1 < len(argv) && argv[i+1] == "torch.distributed.run" {
					at = i + 2
					break
				}
			}
			return insertAfter(argv, at,
				"--nnodes", strconv.Itoa(a.WorldSize),
				"--node_rank", strconv.Itoa(a.Rank),
				"--master_addr", a.LeaderAddr,
				"--master_port", strconv.Itoa(a.Port),
			), nil
		},
	})
}
