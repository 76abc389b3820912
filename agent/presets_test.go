package agent_test

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/muster-dev/muster/agent"
	"github.com/muster-dev/muster/coordinator/testcoord"
)

// TestDeepSpeedMembersShareOneHostfileInRankOrder runs the deepspeed preset
// with a stand-in `deepspeed` launcher that records what it was given: every
// member must get the same generated hostfile, listing the members by rank,
// its own --node_rank, and the launcher's environment.
func TestDeepSpeedMembersShareOneHostfileInRankOrder(t *testing.T) {
	co := testcoord.Start(t, testcoord.Config(t))
	bin, out := t.TempDir(), t.TempDir()
	launcher := filepath.Join(bin, "deepspeed")
	script := `#!/bin/sh
o="` + out + `/$MUSTER_MEMBER_ID"
printf '%s\n' "$@" > "$o.args"
cat "$2" > "$o.hostfile"
env > "$o.env"
`
	if err := os.WriteFile(launcher, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	const n = 3
	var cfgs []agent.Config
	for i := 0; i < n; i++ {
		c := agentConfig(t, co.Addr(), "ds", n, i, launcher, "infer.py", "--model", "m")
		c.Runtime, c.GPUsPerNode, c.Interface, c.Dir = "deepspeed", 2, "lo", filepath.Join(t.TempDir(), "files")
		cfgs = append(cfgs, c)
	}
	for i, err := range runAll(t, cfgs) {
		if err != nil {
			t.Fatalf("agent %d: %v\n%s", i, err, cfgs[i].Stdout)
		}
	}
	wantHosts := "127.0.0.2 slots=2\n127.0.0.3 slots=2\n127.0.0.4 slots=2\n"
	for i := 0; i < n; i++ {
		base := filepath.Join(out, fmt.Sprintf("ds-%d", i))
		hosts, err := os.ReadFile(base + ".hostfile")
		if err != nil {
			t.Fatalf("member %d: launcher did not run: %v\n%s", i, err, cfgs[i].Stdout)
		}
		if string(hosts) != wantHosts {
			t.Errorf("member %d hostfile:\n%s\nwant (rank order):\n%s", i, hosts, wantHosts)
		}
		args, _ := os.ReadFile(base + ".args")
		wantArgs := []string{"--hostfile", filepath.Join(cfgs[i].Dir, "hostfile"), "--no_ssh", "--node_rank", fmt.Sprint(i),
			"--master_addr", "127.0.0.2"}
		if got := strings.Split(string(args), "\n"); len(got) < len(wantArgs) || !reflect.DeepEqual(got[:len(wantArgs)], wantArgs) {
			t.Errorf("member %d launcher args %q, want them to start with %q", i, got, wantArgs)
		}
		env := readEnv(t, base+".env")
		want := map[string]string{
			"RANK": fmt.Sprint(2 * i), "LOCAL_RANK": "0", "WORLD_SIZE": "6", "CROSS_RANK": fmt.Sprint(i), "CROSS_SIZE": "3",
			"LOCAL_SIZE": "2", "MASTER_ADDR": "127.0.0.2", "NCCL_SOCKET_IFNAME": "lo", "GLOO_SOCKET_IFNAME": "lo",
		}
		for k, v := range want {
			if env[k] != v {
				t.Errorf("member %d: %s=%q, want %q", i, k, env[k], v)
			}
		}
	}
}
