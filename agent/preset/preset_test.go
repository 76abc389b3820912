package preset

import (
	"reflect"
	"strings"
	"testing"
)

var asg = Assignment{Namespace: "ns", Group: "g", Member: "m1", Rank: 1, WorldSize: 4, Generation: 2, LeaderAddr: "127.0.0.2", Port: 29500, Address: "127.0.0.3"}

func envMap(t *testing.T, env []string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("malformed env entry %q", kv)
		}
		m[k] = v
	}
	return m
}

func TestEnvPreset(t *testing.T) {
	cmd, err := Build("env", asg, []string{"python3", "serve.py", "--rank={{.Rank}}", "--leader={{.LeaderAddr}}:{{.Port}}", "--n={{.WorldSize}}"})
	if err != nil {
		t.Fatal(err)
	}
	wantArgv := []string{"python3", "serve.py", "--rank=1", "--leader=127.0.0.2:29500", "--n=4"}
	if !reflect.DeepEqual(cmd.Argv, wantArgv) {
		t.Fatalf("argv %v, want %v", cmd.Argv, wantArgv)
	}
	env := envMap(t, cmd.Env)
	want := map[string]string{
		"MUSTER_GROUP": "g", "MUSTER_RANK": "1", "MUSTER_WORLD_SIZE": "4", "MUSTER_GENERATION": "2",
		"MUSTER_LEADER_ADDR": "127.0.0.2", "NODE_RANK": "1", "GROUP_RANK": "1", "NNODES": "4",
		"MASTER_ADDR": "127.0.0.2", "MASTER_PORT": "29500", "TORCHELASTIC_RESTART_COUNT": "2",
		"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s = %q, want %q", k, env[k], v)
		}
	}
}

func TestTorchrunPreset(t *testing.T) {
	flags := []string{"--nnodes", "4", "--node_rank", "1", "--master_addr", "127.0.0.2", "--master_port", "29500"}
	tests := []struct {
		name string
		argv []string
		want []string
	}{
		{"torchrun binary", []string{"torchrun", "--nproc_per_node", "2", "train.py"},
			append(append([]string{"torchrun"}, flags...), "--nproc_per_node", "2", "train.py")},
		{"python wrapper script", []string{"/usr/bin/python3", "e2e/testdata/torchrun.py", "--nproc_per_node", "2", "x.py"},
			append(append([]string{"/usr/bin/python3", "e2e/testdata/torchrun.py"}, flags...), "--nproc_per_node", "2", "x.py")},
		{"python -m", []string{"python3", "-u", "-m", "torch.distributed.run", "train.py"},
			append(append([]string{"python3", "-u", "-m", "torch.distributed.run"}, flags...), "train.py")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd, err := Build("torchrun", asg, tc.argv)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cmd.Argv, tc.want) {
				t.Fatalf("argv\n got %v\nwant %v", cmd.Argv, tc.want)
			}
			env := envMap(t, cmd.Env)
			if _, ok := env["RANK"]; ok {
				t.Error("torchrun preset must not set RANK: torchrun sets it per worker")
			}
			if env["MASTER_PORT"] != "29500" {
				t.Errorf("MASTER_PORT = %q", env["MASTER_PORT"])
			}
		})
	}
}

func TestBuildErrors(t *testing.T) {
	tests := []struct {
		name, preset string
		argv         []string
		want         string
	}{
		{"unknown preset", "nope", []string{"x"}, `runtime "nope" is not a known preset; use one of: deepspeed, env, ray, sglang, torchrun, vllm`},
		{"no command", "env", nil, "no command given"},
		{"unknown field", "env", []string{"x", "{{.Rnak}}"}, `argument 1 "{{.Rnak}}"`},
		{"bad template", "env", []string{"x", "{{.Rank"}, "bad template"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(tc.preset, asg, tc.argv)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
