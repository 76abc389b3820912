package preset

import (
	"errors"
	"net"
	"strings"
	"testing"
)

// Fuzz targets for the addresses the coordinator hands out. Without -fuzz,
// go test runs each over its seeds; with it, for example
//
//	go test ./agent/preset -run '^$' -fuzz FuzzBuild -fuzztime 10s
//	go test ./agent/preset -run '^$' -fuzz FuzzRender -fuzztime 10s

// addressSeeds are addresses a member or a hostile coordinator could send:
// good ones of each form, and ones that are shell syntax, options, or
// almost an address.
var addressSeeds = []string{
	"10.0.0.1", "fd00::1", "::ffff:10.0.0.2", "llama-0.llama.ns.svc", "Host-A",
	"", "$(id>x)", "`id`", "10.0.0.1;id", "a b", "-oProxyCommand=id", "x\n--headless",
	"[::1]", "fe80::1%eth0", "10.0.0.1:29500", "a..b", "*", "~root", "'", "\"", "a|b", "#",
}

// addressChars is everything an accepted address may hold: IPv4, IPv6
// without a zone, and DNS names. None of it means anything to a shell.
const addressChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:-"

// safeAddress reports whether s is made of addressChars alone, is not empty
// and cannot be read as an option.
func safeAddress(s string) bool {
	return s != "" && !strings.HasPrefix(s, "-") && strings.Trim(s, addressChars) == ""
}

// addressFlags are the options whose value the presets fill with an
// address; hostPortFlags hold host:port.
var (
	addressFlags  = map[string]bool{"--master_addr": true, "--master-addr": true, "--data-parallel-address": true}
	hostPortFlags = map[string]bool{"--dist-init-addr": true}
)

// addressArgs returns the elements of a built argv that the preset filled
// with an address, skipping flags the user's own arguments spell (user is
// the argv Build was given, after rendering).
func addressArgs(t *testing.T, argv, user []string) []string {
	t.Helper()
	given := map[string]bool{}
	for _, u := range user {
		given[u] = true
	}
	var out []string
	host := func(hp string) string {
		h, _, err := net.SplitHostPort(hp)
		if err != nil {
			t.Fatalf("argv %q: %q is not host:port: %v", argv, hp, err)
		}
		return h
	}
	for i := 0; i+1 < len(argv); i++ {
		switch {
		case given[argv[i]]:
		case addressFlags[argv[i]]:
			out = append(out, argv[i+1])
		case hostPortFlags[argv[i]]:
			out = append(out, host(argv[i+1]))
		}
	}
	// The ray preset passes them as the script's arguments:
	// ray.sh worker HEAD_ADDRESS ADDRESS, ray.sh head NODES PORT ADDRESS HEAD_ADDRESS.
	if len(argv) >= 5 && argv[0] == "/bin/sh" && strings.HasSuffix(argv[1], "/"+rayScript) {
		switch argv[2] {
		case "worker":
			out = append(out, host(argv[3]), argv[4])
		case "head":
			out = append(out, argv[5], host(argv[6]))
		}
	}
	return out
}

// FuzzBuild builds every preset's command for fuzzed addresses and an extra
// (possibly templated) argument. Invariants: Build never panics; an
// assignment with an address that is not an IP or DNS name is refused with
// ErrAddress; for an accepted one, every address the preset put into argv,
// env or the hostfile is a plain address.
func FuzzBuild(f *testing.F) {
	for i, c := range goldenCases {
		for j, addr := range addressSeeds {
			f.Add(uint8(i), uint8(j), addr, "10.0.0.2", "10.0.0.2", "--x={{.LeaderAddr}}")
			f.Add(uint8(i), uint8(j+1), "10.0.0.1", addr, "10.0.0.2", c.argv[len(c.argv)-1])
			f.Add(uint8(i), uint8(j), "10.0.0.1", "10.0.0.2", addr, "{{.Address}}")
		}
	}
	f.Fuzz(func(t *testing.T, which, rank uint8, leader, address, peer, extra string) {
		c := goldenCases[int(which)%len(goldenCases)]
		a := goldenAssignment(int(rank) % 2)
		a.LeaderAddr, a.Address, a.Peers = leader, address, []string{leader, peer}
		argv := append(append([]string{}, c.argv...), extra)
		cmd, err := Build(c.preset, a, argv)
		valid := validAddress(leader) && validAddress(address) && validAddress(peer)
		if !valid {
			if !errors.Is(err, ErrAddress) {
				t.Fatalf("%s with leader %q, address %q, peer %q: err = %v, argv %q; want ErrAddress", c.preset, leader, address, peer, err, cmd.Argv)
			}
			return
		}
		if err != nil {
			if errors.Is(err, ErrAddress) {
				t.Fatalf("%s refused valid addresses %q %q %q: %v", c.preset, leader, address, peer, err)
			}
			return // a bad template in extra, or a flag the preset owns
		}
		user, err := Render(a, argv)
		if err != nil {
			t.Fatalf("Build accepted what Render refuses: %v", err)
		}
		for _, v := range addressArgs(t, cmd.Argv, user) {
			if !safeAddress(v) || !validAddress(v) {
				t.Errorf("%s: argv %q holds %q where an address belongs", c.preset, cmd.Argv, v)
			}
		}
		env := map[string]string{}
		for _, kv := range cmd.Env {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
		for _, k := range []string{"MASTER_ADDR", "MUSTER_LEADER_ADDR", "MUSTER_ADDRESS", "VLLM_HOST_IP"} {
			if v, ok := env[k]; ok && !safeAddress(v) {
				t.Errorf("%s: %s=%q is not a plain address", c.preset, k, v)
			}
		}
		if hf, ok := cmd.Files[deepspeedHostfile]; ok {
			for _, line := range strings.Split(strings.TrimSuffix(string(hf), "\n"), "\n") {
				if host, _, _ := strings.Cut(line, " "); !safeAddress(host) {
					t.Errorf("hostfile line %q: %q is not a plain address", line, host)
				}
			}
		}
	})
}

// FuzzRender expands fuzzed templates with fuzzed addresses. Invariants:
// Render never panics; an address that is not an IP or DNS name is never
// expanded (ErrAddress, whatever the template); an accepted address
// expands to itself, and that part of the output holds no character a
// shell would read as syntax.
func FuzzRender(f *testing.F) {
	templates := []string{"{{.LeaderAddr}}", "echo {{.LeaderAddr}}:{{.Port}}", "--peers={{range .Peers}}{{.}},{{end}}",
		"{{.Rank", "{{printf \"%q\" .Address}}", "{{.Nope}}", "plain", "$(true) {{.Address}}"}
	for i, addr := range addressSeeds {
		tmpl := templates[i%len(templates)]
		f.Add(tmpl, addr, "10.0.0.2", "sh -c 'x ", "'")
		f.Add(tmpl, "10.0.0.1", addr, "", "")
	}
	f.Fuzz(func(t *testing.T, tmpl, leader, address, prefix, suffix string) {
		a := goldenAssignment(0)
		// Before the barrier (Check) neither the leader nor the peers are
		// known: an empty LeaderAddr is allowed then.
		a.LeaderAddr, a.Address, a.Peers = leader, address, nil
		if leader != "" {
			a.Peers = []string{leader, address}
		}
		out, err := Render(a, []string{tmpl})
		valid := (leader == "" || validAddress(leader)) && validAddress(address)
		if !valid {
			if !errors.Is(err, ErrAddress) {
				t.Fatalf("template %q with leader %q, address %q: %q, %v; want ErrAddress", tmpl, leader, address, out, err)
			}
			return
		}
		if errors.Is(err, ErrAddress) {
			t.Fatalf("valid addresses %q %q refused: %v", leader, address, err)
		}
		// The parts an address fills, between literal text of the user's.
		if strings.ContainsAny(prefix, "{}") || strings.ContainsAny(suffix, "{}") {
			return
		}
		out, err = Render(a, []string{prefix + "{{.LeaderAddr}}" + suffix, prefix + "{{.Address}}" + suffix})
		if err != nil {
			t.Fatalf("prefix %q, suffix %q: %v", prefix, suffix, err)
		}
		for i, want := range []string{leader, address} {
			if want == "" {
				continue // the leader, before the barrier
			}
			got, ok := strings.CutPrefix(out[i], prefix)
			if got, ok2 := strings.CutSuffix(got, suffix); !ok || !ok2 || got != want {
				t.Fatalf("%q expanded to %q, want %q between %q and %q", want, out[i], want, prefix, suffix)
			} else if !safeAddress(got) {
				t.Errorf("address %q expanded to %q, which is not a plain address", want, got)
			}
		}
	})
}
