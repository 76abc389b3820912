package preset

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the presets' output")

// goldenCases are one command per preset (some presets have more than one
// form); each is rendered for a leader and a worker of a two-member group
// into testdata/<name>-{leader,worker}.golden. A new preset needs a case
// here: TestEveryPresetHasGoldenFiles says so.
var goldenCases = []struct {
	name, preset string
	argv         []string
}{
	{"env", "env", []string{"python3", "serve.py", "--rank={{.Rank}}", "--peers={{.WorldSize}}"}},
	{"torchrun", "torchrun", []string{"torchrun", "--nproc_per_node", "8", "train.py"}},
	{"vllm", "vllm", []string{"vllm", "serve", "meta-llama/Llama-3.1-405B-Instruct", "--tensor-parallel-size", "8", "--pipeline-parallel-size", "2"}},
	{"vllm-dp", "vllm", []string{"vllm", "serve", "deepseek-ai/DeepSeek-V3", "-dp=4", "-tp", "4", "--enable-expert-parallel"}},
	{"vllm-api-server", "vllm", []string{"python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "meta-llama/Llama-3.1-405B-Instruct", "--tensor-parallel-size=16"}},
	{"sglang", "sglang", []string{"python3", "-m", "sglang.launch_server", "--model-path", "meta-llama/Meta-Llama-3.1-405B-Instruct", "--tp", "16"}},
	{"deepspeed", "deepspeed", []string{"deepspeed", "inference.py", "--model", "bigscience/bloom"}},
	{"ray", "ray", []string{"vllm", "serve", "meta-llama/Llama-3.1-405B-Instruct", "--distributed-executor-backend", "ray", "-tp", "16"}},
}

// goldenAssignment is rank of a group of two members with 8 GPUs each.
func goldenAssignment(rank int) Assignment {
	peers := []string{"10.0.0.1", "10.0.0.2"}
	return Assignment{
		Namespace: "ns", Group: "g", Member: fmt.Sprintf("g-%d", rank), Rank: rank, WorldSize: 2, Generation: 3,
		LeaderAddr: peers[0], Port: 29500, Address: peers[rank], Peers: peers, GPUsPerNode: 8,
		Interface: "eth0", Dir: fmt.Sprintf("/run/muster/ns/g/g-%d", rank),
	}
}

// formatCommand is the golden form of a command: one argument, variable
// and file line per line, quoted where it matters.
func formatCommand(argv []string, cmd Command) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# given: %q\nargv:\n", argv)
	for _, arg := range cmd.Argv {
		fmt.Fprintf(&b, "  %q\n", arg)
	}
	b.WriteString("env:\n")
	for _, kv := range cmd.Env {
		fmt.Fprintf(&b, "  %s\n", kv)
	}
	names := make([]string, 0, len(cmd.Files))
	for n := range cmd.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "file %s:\n", n)
		for _, line := range strings.SplitAfter(string(cmd.Files[n]), "\n") {
			if line != "" {
				fmt.Fprintf(&b, "  | %s", strings.TrimSuffix(line, "\n")+"\n")
			}
		}
	}
	return b.String()
}

func TestGolden(t *testing.T) {
	for _, tc := range goldenCases {
		for rank, role := range []string{"leader", "worker"} {
			t.Run(tc.name+"-"+role, func(t *testing.T) {
				cmd, err := Build(tc.preset, goldenAssignment(rank), tc.argv)
				if err != nil {
					t.Fatal(err)
				}
				got := formatCommand(tc.argv, cmd)
				path := filepath.Join("testdata", tc.name+"-"+role+".golden")
				if *update {
					if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run go test ./agent/preset -update to write it)", err)
				}
				if got != string(want) {
					t.Errorf("%s differs from the preset's output (go test ./agent/preset -update rewrites it)\n--- got\n%s--- want\n%s", path, got, want)
				}
			})
		}
	}
}

func TestEveryPresetHasGoldenFiles(t *testing.T) {
	covered := map[string]bool{}
	for _, tc := range goldenCases {
		covered[tc.preset] = true
	}
	for _, n := range Names() {
		if !covered[n] {
			t.Errorf("preset %s has no golden case: add one to goldenCases and run go test ./agent/preset -update", n)
		}
	}
}
