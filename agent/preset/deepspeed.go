package preset

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// deepspeedHostfile is the generated hostfile's name inside Assignment.Dir.
const deepspeedHostfile = "hostfile"

// The deepspeed preset runs the `deepspeed` launcher on every member
// without ssh: each launcher starts its own node's processes. Sources:
// deepspeedai/DeepSpeed deepspeed/launcher/runner.py (--hostfile/-H "MPI
// style ... worker-0 slots=4", --no_ssh "Launch training independently on
// each node without ssh setup", --node_rank "Only required when --no_ssh is
// set", --master_addr, --master_port; the user script and its arguments
// follow, so the flags go right after the launcher) and
// deepspeed/launcher/launch.py, which builds the world from the hostfile in
// its order (node i = hostfile line i, so the file lists the members by
// rank) and exports MASTER_ADDR, MASTER_PORT, WORLD_SIZE (all slots),
// CROSS_RANK (node rank), CROSS_SIZE (nodes), LOCAL_SIZE (slots here) and,
// per process, RANK and LOCAL_RANK. The preset sets the same names, with the
// values of this node's first process, so a program started without the
// launcher (one process per member) sees the same world.
//
// The hostfile has one "ADDRESS slots=GPUS" line per member, the same on
// every member; runner.py refuses a host listed twice, so members must have
// distinct addresses.
func init() {
	Register(Preset{
		Name:        "deepspeed",
		Summary:     "deepspeed launcher: generated hostfile (ADDR slots=GPUS by rank), --hostfile --no_ssh --node_rank --master_addr --master_port; RANK, LOCAL_RANK, WORLD_SIZE",
		Args:        deepspeedArgs,
		Env:         deepspeedEnv,
		Files:       deepspeedFiles,
		Check:       deepspeedCheck,
		NeedsPeers:  true,
		EnvPrefixes: []string{"DS_", "TORCH_", "NCCL_"},
	})
}

// deepspeedOwned are the runner flags the preset sets.
var deepspeedOwned = [][]string{{"--hostfile", "-H"}, {"--no_ssh"}, {"--node_rank"}, {"--master_addr"}, {"--master_port"}}

// deepspeedValueFlags are runner.py's options that take a value; anything
// else before the user script is a switch. Knowing them finds where the
// launcher's own arguments end.
var deepspeedValueFlags = []string{"-H", "--hostfile", "-i", "--include", "-e", "--exclude", "--num_nodes",
	"--min_elastic_nodes", "--max_elastic_nodes", "--num_gpus", "--num_accelerators", "--master_port",
	"--master_addr", "--node_rank", "--launcher", "--launcher_args", "--enable_each_rank_log", "--autotuning",
	"--comment", "--account", "--bind_core_list", "--ssh_port"}

// deepspeedLauncher returns the index just past the launcher (`deepspeed`
// or `-m deepspeed.launcher.runner`) and past the launcher's own options
// (where the user script starts).
func deepspeedLauncher(argv []string) (at, script int, err error) {
	at = -1
	for i, arg := range argv {
		if baseName(arg) == "deepspeed" {
			at = i + 1
			break
		}
	}
	if i := moduleIndex(argv, "deepspeed.launcher.runner"); i >= 0 && at < 0 {
		at = i + 1
	}
	if at < 0 {
		return 0, 0, errors.New("no deepspeed launcher in the command (`deepspeed ...` or `python -m deepspeed.launcher.runner ...`); for a program that calls deepspeed.init_distributed() itself, use --runtime env")
	}
	script = at
	for script < len(argv) && strings.HasPrefix(argv[script], "-") {
		name, _, hasEq := strings.Cut(argv[script], "=")
		script++
		if !hasEq && matchesFlag(name, deepspeedValueFlags) {
			script++
		}
	}
	return at, script, nil
}

func deepspeedCheck(a Assignment, argv []string) (string, error) {
	at, script, err := deepspeedLauncher(argv)
	if err != nil {
		return "", err
	}
	for _, names := range deepspeedOwned {
		if hasFlag(argv[at:min(script, len(argv))], names...) {
			return "", fmt.Errorf("the command gives the launcher %s, which the preset sets from the assignment; remove it", names[0])
		}
	}
	if a.GPUsPerNode <= 0 {
		return "", errors.New("the hostfile needs the GPUs per node (its slots): set --gpus-per-node or MUSTER_GPUS_PER_NODE")
	}
	return "", nil
}

func deepspeedArgs(a Assignment, argv []string) ([]string, error) {
	at, _, err := deepspeedLauncher(argv)
	if err != nil {
		return nil, err
	}
	return insertAfter(argv, at,
		"--hostfile", filepath.Join(a.Dir, deepspeedHostfile),
		"--no_ssh",
		"--node_rank", strconv.Itoa(a.Rank),
		"--master_addr", a.LeaderAddr,
		"--master_port", strconv.Itoa(a.Port),
	), nil
}

func deepspeedFiles(a Assignment) (map[string][]byte, error) {
	var b strings.Builder
	seen := map[string]int{}
	for rank, addr := range a.Peers {
		if first, dup := seen[addr]; dup {
			return nil, fmt.Errorf("ranks %d and %d share the address %s; DeepSpeed's hostfile needs one host per member", first, rank, addr)
		}
		seen[addr] = rank
		fmt.Fprintf(&b, "%s slots=%d\n", addr, a.GPUsPerNode)
	}
	return map[string][]byte{deepspeedHostfile: []byte(b.String())}, nil
}

func deepspeedEnv(a Assignment) map[string]string {
	g := a.GPUsPerNode
	return map[string]string{
		"RANK":       strconv.Itoa(a.Rank * g),
		"LOCAL_RANK": "0",
		"WORLD_SIZE": strconv.Itoa(a.WorldSize * g),
		"CROSS_RANK": strconv.Itoa(a.Rank),
		"CROSS_SIZE": strconv.Itoa(a.WorldSize),
		"LOCAL_SIZE": strconv.Itoa(g),
	}
}
