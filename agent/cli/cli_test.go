package cli

import (
	"io"
	"testing"
)

func TestGPUsPerNodeAndInterfaceComeFromTheEnvironmentUnlessFlagged(t *testing.T) {
	env := map[string]string{"MUSTER_GPUS_PER_NODE": "8", "MUSTER_INTERFACE": "eth1"}
	old := lookupEnv
	lookupEnv = func(k string) string { return env[k] }
	t.Cleanup(func() { lookupEnv = old })
	base := []string{"--group", "g", "--size", "2", "--member-id", "m"}
	cfg, err := Parse(append(base, "--", "true"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GPUsPerNode != 8 || cfg.Interface != "eth1" {
		t.Fatalf("from the environment: gpus %d, interface %q; want 8, eth1", cfg.GPUsPerNode, cfg.Interface)
	}
	cfg, err = Parse(append(base, "--gpus-per-node", "4", "--interface", "=ib0", "--", "true"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GPUsPerNode != 4 || cfg.Interface != "=ib0" {
		t.Fatalf("from flags: gpus %d, interface %q; want 4, =ib0", cfg.GPUsPerNode, cfg.Interface)
	}
}
