package preset

import (
	"errors"
	"strings"
	"testing"
)

func TestValidAddress(t *testing.T) {
	tests := []struct {
		addr string
		ok   bool
	}{
		{"10.0.0.1", true},
		{"fd00::1", true},
		{"::ffff:10.0.0.1", true},
		{"llama-0.llama.ns.svc.cluster.local", true},
		{"Host-A.example", true}, // the coordinator ignores case too
		{"localhost", true},
		{"", false},
		{"$(id>x)", false},
		{"`id`", false},
		{"10.0.0.1;id", false},
		{"10.0.0.1 --foo", false},
		{"-oProxyCommand=id", false},
		{"a\nb", false},
		{"[::1]", false},
		{"fe80::1%eth0", false}, // a zone is free text
		{"10.0.0.1:29500", false},
		{"host_name", false},
		{"a..b", false},
		{strings.Repeat("a", 254), false},
	}
	for _, tc := range tests {
		if got := validAddress(tc.addr); got != tc.ok {
			t.Errorf("validAddress(%q) = %v, want %v", tc.addr, got, tc.ok)
		}
	}
}

// TestBadAddressesRefused: an address that is not an IP literal or a DNS
// name never reaches argv, env, a file or a template, for any preset, and
// the error names the field.
func TestBadAddressesRefused(t *testing.T) {
	tests := []struct {
		name  string
		set   func(a *Assignment)
		field string
	}{
		{"leader", func(a *Assignment) { a.LeaderAddr = "$(id>x)" }, `leader address "$(id>x)" is not an IP address or DNS name`},
		{"own", func(a *Assignment) { a.Address = "10.0.0.2;reboot" }, `address "10.0.0.2;reboot" is not an IP address or DNS name`},
		{"peer", func(a *Assignment) { a.Peers = []string{"10.0.0.1", "`id`"} }, "address of rank 1 \"`id`\" is not an IP address or DNS name"},
		{"leader empty after the barrier", func(a *Assignment) { a.LeaderAddr = "" }, `leader address "" is not an IP address or DNS name`},
	}
	for _, tc := range tests {
		for _, c := range goldenCases {
			t.Run(tc.name+"/"+c.name, func(t *testing.T) {
				a := goldenAssignment(1)
				tc.set(&a)
				argv := append(append([]string{}, c.argv...), "--x={{.LeaderAddr}}")
				cmd, err := Build(c.preset, a, argv)
				if err == nil || !errors.Is(err, ErrAddress) || !strings.Contains(err.Error(), tc.field) {
					t.Fatalf("Build: err = %v, argv %q; want an error containing %q", err, cmd.Argv, tc.field)
				}
			})
		}
	}
	// Before the barrier no leader is known: Check and Render take an
	// empty LeaderAddr, but not a bad own address.
	a := goldenAssignment(0)
	a.LeaderAddr, a.Peers = "", nil
	if _, err := Check("vllm", a, []string{"vllm", "serve", "m", "-tp", "8", "-pp", "2"}); err != nil {
		t.Errorf("Check before the barrier: %v", err)
	}
	a.Address = "$(id)"
	if _, err := Check("env", a, []string{"sh", "-c", "echo {{.Address}}"}); !errors.Is(err, ErrAddress) {
		t.Errorf("Check with address $(id): err = %v, want ErrAddress", err)
	}
	if out, err := Render(a, []string{"sh", "-c", "echo {{.Address}}"}); !errors.Is(err, ErrAddress) {
		t.Errorf("Render with address $(id) = %q, %v; want ErrAddress", out, err)
	}
}
