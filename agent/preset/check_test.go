package preset

import (
	"reflect"
	"strings"
	"testing"
)

// TestRefusals: every shape a preset cannot run is refused before launch,
// with a message that says the numbers or the flag.
func TestRefusals(t *testing.T) {
	tests := []struct {
		name, preset string
		gpus         int
		peers        []string
		argv         []string
		want         string
	}{
		{"vllm TP x PP short of the GPUs", "vllm", 8, nil,
			[]string{"vllm", "serve", "m", "--tensor-parallel-size", "8", "--pipeline-parallel-size", "1"},
			"tensor-parallel-size 8 x pipeline-parallel-size 1 = 8 GPUs, but the group has 2 nodes x 8 GPUs per node = 16"},
		{"vllm TP with =, PP default", "vllm", 4, nil,
			[]string{"vllm", "serve", "m", "--tensor-parallel-size=4"},
			"tensor-parallel-size 4 x pipeline-parallel-size 1 = 4 GPUs, but the group has 2 nodes x 4 GPUs per node = 8"},
		{"vllm short flags", "vllm", 8, nil,
			[]string{"vllm", "serve", "m", "-tp=8", "-pp", "4"},
			"tensor-parallel-size 8 x pipeline-parallel-size 4 = 32 GPUs, but the group has 2 nodes x 8 GPUs per node = 16"},
		{"vllm underscore spelling", "vllm", 8, nil,
			[]string{"vllm", "serve", "m", "--tensor_parallel_size", "2"},
			"tensor-parallel-size 2 x pipeline-parallel-size 1 = 2 GPUs"},
		{"vllm data parallel short of the GPUs", "vllm", 8, nil,
			[]string{"vllm", "serve", "m", "-dp", "2", "-tp", "4"},
			"tensor-parallel-size 4 x pipeline-parallel-size 1 x data-parallel-size 2 = 8 GPUs, but the group has 2 nodes x 8 GPUs per node = 16"},
		{"vllm data parallel not divisible by nodes", "vllm", 8, nil,
			[]string{"vllm", "serve", "m", "--data-parallel-size", "3"},
			"data-parallel-size 3 does not split evenly over 2 nodes"},
		{"vllm data-parallel-size-local disagrees", "vllm", 8, nil,
			[]string{"vllm", "serve", "m", "-dp", "4", "-dpl", "1", "-tp", "4"},
			"--data-parallel-size-local 1, but data-parallel-size 4 over 2 nodes is 2 per node"},
		{"vllm not a number", "vllm", 8, nil,
			[]string{"vllm", "serve", "m", "-tp", "eight"},
			`--tensor-parallel-size "eight" is not a whole number`},
		{"vllm flag the preset owns", "vllm", 8, nil,
			[]string{"vllm", "serve", "m", "-tp", "16", "--headless"},
			"the command sets --headless, which the preset sets"},
		{"vllm node rank underscored", "vllm", 8, nil,
			[]string{"vllm", "serve", "m", "-tp", "16", "--node_rank=1"},
			"the command sets --node-rank"},
		{"sglang flag the preset owns", "sglang", 8, nil,
			[]string{"python3", "-m", "sglang.launch_server", "--dist-init-addr", "1.2.3.4:5"},
			"the command sets --dist-init-addr"},
		{"deepspeed without the launcher", "deepspeed", 8, nil,
			[]string{"python3", "infer.py"},
			"no deepspeed launcher in the command"},
		{"deepspeed without GPUs per node", "deepspeed", 0, nil,
			[]string{"deepspeed", "infer.py"},
			"the hostfile needs the GPUs per node"},
		{"deepspeed launcher flag the preset owns", "deepspeed", 8, nil,
			[]string{"deepspeed", "--num_gpus", "8", "--master_port=1234", "infer.py"},
			"the command gives the launcher --master_port"},
		{"deepspeed members sharing an address", "deepspeed", 8, []string{"10.0.0.1", "10.0.0.1"},
			[]string{"deepspeed", "infer.py"},
			"ranks 0 and 1 share the address 10.0.0.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := goldenAssignment(1)
			a.GPUsPerNode = tc.gpus
			if tc.peers != nil {
				a.Peers = tc.peers
			}
			_, err := Build(tc.preset, a, tc.argv)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestChecksThatPass(t *testing.T) {
	tests := []struct {
		name, preset string
		gpus         int
		argv         []string
		note         string
	}{
		{"vllm GPUs unknown: skipped, said so", "vllm", 0, []string{"vllm", "serve", "m", "-tp", "3"}, "tensor x pipeline parallel size not checked"},
		{"vllm TP x PP = nodes x GPUs", "vllm", 4, []string{"vllm", "serve", "m", "-tp", "4", "-pp", "2"}, ""},
		{"deepspeed script flags are the script's", "deepspeed", 8, []string{"deepspeed", "--num_gpus", "8", "infer.py", "--master_port", "1"}, ""},
		{"sglang", "sglang", 0, []string{"sglang", "serve", "--model-path", "m"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := goldenAssignment(0)
			a.GPUsPerNode = tc.gpus
			note, err := Check(tc.preset, a, tc.argv)
			if err != nil {
				t.Fatal(err)
			}
			if (tc.note == "") != (note == "") || !strings.Contains(note, tc.note) {
				t.Fatalf("note = %q, want %q", note, tc.note)
			}
		})
	}
}

func TestFlagsGoAfterTheLauncher(t *testing.T) {
	a := goldenAssignment(1)
	vflags := []string{"--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port", "29500", "--headless"}
	sflags := []string{"--nnodes", "2", "--node-rank", "1", "--dist-init-addr", "10.0.0.1:29500"}
	join := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		preset     string
		argv, want []string
	}{
		{"vllm", []string{"/opt/venv/bin/vllm", "serve", "m", "-tp", "16"}, join([]string{"/opt/venv/bin/vllm", "serve", "m"}, vflags, []string{"-tp", "16"})},
		{"vllm", []string{"vllm", "serve", "--model", "m", "-tp", "16"}, join([]string{"vllm", "serve"}, vflags, []string{"--model", "m", "-tp", "16"})},
		{"vllm", []string{"python3", "-m", "vllm.entrypoints.cli.main", "serve", "m", "-tp", "16"}, join([]string{"python3", "-m", "vllm.entrypoints.cli.main", "serve", "m"}, vflags, []string{"-tp", "16"})},
		{"vllm", []string{"./serve.sh", "-tp", "16"}, join([]string{"./serve.sh", "-tp", "16"}, vflags)},
		{"sglang", []string{"sglang", "serve", "--model-path", "m"}, join([]string{"sglang", "serve"}, sflags, []string{"--model-path", "m"})},
		{"sglang", []string{"./run.sh", "--model-path", "m"}, join([]string{"./run.sh", "--model-path", "m"}, sflags)},
		{"sglang", []string{"python3", "-m", "sglang.launch_server", "--model-path", "[::1]"}, join([]string{"python3", "-m", "sglang.launch_server"}, sflags, []string{"--model-path", "[::1]"})},
	}
	for _, tc := range tests {
		cmd, err := Build(tc.preset, a, tc.argv)
		if err != nil {
			t.Fatalf("%s %q: %v", tc.preset, tc.argv, err)
		}
		if !reflect.DeepEqual(cmd.Argv, tc.want) {
			t.Errorf("%s %q:\n got %q\nwant %q", tc.preset, tc.argv, cmd.Argv, tc.want)
		}
	}
}

func TestDistInitAddrBracketsIPv6(t *testing.T) {
	a := goldenAssignment(0)
	a.LeaderAddr = "fd00::1"
	cmd, err := Build("sglang", a, []string{"sglang", "serve"})
	if err != nil {
		t.Fatal(err)
	}
	if got := cmd.Argv[len(cmd.Argv)-1]; got != "[fd00::1]:29500" {
		t.Fatalf("--dist-init-addr %q, want [fd00::1]:29500", got)
	}
}

func TestInterfaceUnsetLeavesSocketVariablesAlone(t *testing.T) {
	a := goldenAssignment(0)
	a.Interface = ""
	env := CommonEnv(a)
	for _, k := range []string{"NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"} {
		if v, ok := env[k]; ok {
			t.Errorf("%s=%q set without --interface", k, v)
		}
	}
}

func TestServiceLinks(t *testing.T) {
	environ := []string{
		"VLLM_PORT=tcp://10.0.0.1:8000",
		"VLLM_SERVICE_HOST=10.0.0.1",
		"VLLM_SERVICE_PORT=8000",
		"VLLM_PORT_8000_TCP=tcp://10.0.0.1:8000",
		"VLLM_API_SERVICE_HOST=10.0.0.9",
		"VLLM_PORT_X=1",
		"VLLM_HOST_IP=10.1.1.1",
		"VLLM_PORT=8000",
		"RAY_PORT=tcp://10.0.0.2:6379",
		"PATH=/bin",
	}
	got := ServiceLinks("vllm", environ)
	want := []ServiceLink{
		{Var: "VLLM_API_SERVICE_HOST", Value: "10.0.0.9", Service: "vllm-api"},
		{Var: "VLLM_PORT", Value: "tcp://10.0.0.1:8000", Service: "vllm"},
		{Var: "VLLM_SERVICE_HOST", Value: "10.0.0.1", Service: "vllm"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("vllm service links\n got %+v\nwant %+v", got, want)
	}
	if got := ServiceLinks("ray", environ); len(got) != 1 || got[0].Var != "RAY_PORT" || got[0].Service != "ray" {
		t.Fatalf("ray service links %+v, want RAY_PORT from Service ray", got)
	}
	if got := ServiceLinks("sglang", environ); len(got) != 0 {
		t.Fatalf("sglang reads no VLLM_ or RAY_ variable, got %+v", got)
	}
}

func TestEveryPresetNamesTheVariablesItReads(t *testing.T) {
	for _, n := range Names() {
		if p, _ := Get(n); len(p.EnvPrefixes) == 0 {
			t.Errorf("preset %s has no EnvPrefixes: the service-link warning cannot cover it", n)
		}
	}
}
