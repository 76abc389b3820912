package preset

import "strconv"

// The env preset runs one process per pod that reads the standard
// torch.distributed variables itself (init_process_group("gloo"|"nccl")
// with init_method "env://", DeepSpeed's deepspeed.init_distributed()).
func init() {
	Register(Preset{
		Name:        "env",
		Summary:     "one process per member; RANK, WORLD_SIZE, LOCAL_RANK=0, LOCAL_WORLD_SIZE=1 set for env:// init",
		EnvPrefixes: []string{"TORCH_", "NCCL_"},
		Env: func(a Assignment) map[string]string {
			return map[string]string{
				"RANK":             strconv.Itoa(a.Rank),
				"WORLD_SIZE":       strconv.Itoa(a.WorldSize),
				"LOCAL_RANK":       "0",
				"LOCAL_WORLD_SIZE": "1",
			}
		},
	})
}
