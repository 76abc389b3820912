// Package preset turns a rank assignment into the exact command line and
// environment a model runtime expects. Adding a runtime is one Register
// call with its own flags and env, plus its golden files in testdata/; see
// torchrun.go for the shape.
package preset

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"text/template"
)

// Assignment is what the barrier handed this member, plus its identity.
type Assignment struct {
	Namespace  string
	Group      string
	Member     string
	Rank       int
	WorldSize  int
	Generation int64
	// LeaderAddr and Port are rank 0's address and MASTER_PORT.
	LeaderAddr string
	Port       int
	// Address is this member's own address (pod IP).
	Address string
	// Peers are every member's address in rank order (Peers[0] is the
	// leader); filled only for presets with NeedsPeers.
	Peers []string
	// GPUsPerNode is the number of GPUs each member has; 0 when unknown.
	GPUsPerNode int
	// Interface, when set, is the network interface collective
	// communication must use (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME).
	Interface string
	// Dir is the member's own directory, where the agent writes the
	// command's Files before starting it.
	Dir string
}

// Preset describes one runtime.
type Preset struct {
	Name string
	// Summary is one line for --help.
	Summary string
	// Args returns the command to run, given the user's (templated) command.
	Args func(a Assignment, argv []string) ([]string, error)
	// Env returns variables added on top of the common ones.
	Env func(a Assignment) map[string]string
	// Files returns files, by name inside Assignment.Dir, that the agent
	// writes before starting the command (a generated hostfile, a script).
	Files func(a Assignment) (map[string][]byte, error)
	// Check refuses a group shape the runtime cannot run (for example a
	// parallel size that does not match the GPUs). It sees the whole group
	// (WorldSize, GPUsPerNode) but not yet a rank, so the agent can call it
	// before joining; note, when not empty, is a remark to log (a check
	// that was skipped and why).
	Check func(a Assignment, argv []string) (note string, err error)
	// NeedsPeers asks the agent for every member's address (Peers).
	NeedsPeers bool
	// PortSpan is how many ports, from MASTER_PORT up, the runtime binds on
	// the leader; the agent picks a MASTER_PORT with all of them free.
	// 0 means 1.
	PortSpan int
	// EnvPrefixes are the prefixes of the environment variables the runtime
	// reads, so the agent can warn about Kubernetes service links that
	// collide with them.
	EnvPrefixes []string
}

var registry = map[string]Preset{}

// Register adds a preset; it panics on a duplicate name (a programming error).
func Register(p Preset) {
	if _, dup := registry[p.Name]; dup {
		panic("preset: duplicate " + p.Name)
	}
	registry[p.Name] = p
}

// Names lists the registered presets, sorted.
func Names() []string {
	out := make([]string, 0, len(registry))
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Get returns the preset called name.
func Get(name string) (Preset, error) {
	p, ok := registry[name]
	if !ok {
		return Preset{}, fmt.Errorf("runtime %q is not a known preset; use one of: %s", name, strings.Join(Names(), ", "))
	}
	return p, nil
}

// Command is a ready-to-start runtime command.
type Command struct {
	Argv []string
	// Env holds KEY=VALUE entries to add to the agent's environment.
	Env []string
	// Files are written into Assignment.Dir (name -> content) before Argv
	// starts.
	Files map[string][]byte
}

// Check renders argv and runs preset name's group check for a (which needs
// WorldSize and GPUsPerNode, not a rank). The agent calls it before joining
// so that a group it cannot run is refused at once, with the numbers.
func Check(name string, a Assignment, argv []string) (note string, err error) {
	p, err := Get(name)
	if err != nil {
		return "", err
	}
	if err := a.checkAddresses(false); err != nil {
		return "", fmt.Errorf("runtime %s: %w", name, err)
	}
	if p.Check == nil {
		return "", nil
	}
	rendered, err := Render(a, argv)
	if err != nil {
		return "", err
	}
	note, err = p.Check(a, rendered)
	if err != nil {
		return "", fmt.Errorf("runtime %s: %w", name, err)
	}
	return note, nil
}

// Build renders argv's templates and applies preset name to a.
func Build(name string, a Assignment, argv []string) (Command, error) {
	p, err := Get(name)
	if err != nil {
		return Command{}, err
	}
	if len(argv) == 0 {
		return Command{}, fmt.Errorf("runtime %s: no command given: put it after --", name)
	}
	// Every address goes into argv, env or a file below; the leader's is
	// known by now.
	if err := a.checkAddresses(true); err != nil {
		return Command{}, fmt.Errorf("runtime %s: %w", name, err)
	}
	if p.NeedsPeers && len(a.Peers) != a.WorldSize {
		return Command{}, fmt.Errorf("runtime %s: needs every member's address, got %d of %d", name, len(a.Peers), a.WorldSize)
	}
	if _, err := Check(name, a, argv); err != nil {
		return Command{}, err
	}
	rendered, err := Render(a, argv)
	if err != nil {
		return Command{}, err
	}
	cmd := Command{Argv: rendered}
	if p.Args != nil {
		if cmd.Argv, err = p.Args(a, rendered); err != nil {
			return Command{}, fmt.Errorf("runtime %s: %w", name, err)
		}
	}
	if p.Files != nil {
		if cmd.Files, err = p.Files(a); err != nil {
			return Command{}, fmt.Errorf("runtime %s: %w", name, err)
		}
	}
	env := CommonEnv(a)
	if p.Env != nil {
		for k, v := range p.Env(a) {
			env[k] = v
		}
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cmd.Env = append(cmd.Env, k+"="+env[k])
	}
	return cmd, nil
}

// Render expands {{.Rank}}, {{.WorldSize}}, {{.LeaderAddr}}, {{.Port}} (and
// the other Assignment fields) in each argument. It refuses an assignment
// whose addresses are not IP literals or DNS names, so that an address can
// never put shell syntax into a command such as `sh -c "... {{.LeaderAddr}}"`;
// an empty LeaderAddr (not known before the barrier) expands to nothing.
func Render(a Assignment, argv []string) ([]string, error) {
	if err := a.checkAddresses(false); err != nil {
		return nil, err
	}
	out := make([]string, len(argv))
	for i, arg := range argv {
		if !strings.Contains(arg, "{{") {
			out[i] = arg
			continue
		}
		t, err := template.New("arg").Option("missingkey=error").Parse(arg)
		if err != nil {
			return nil, fmt.Errorf("argument %d %q: bad template: %w", i, arg, err)
		}
		var b bytes.Buffer
		if err := t.Execute(&b, a); err != nil {
			return nil, fmt.Errorf("argument %d %q: %w (fields: .Rank .WorldSize .LeaderAddr .Port .Generation .Address .Group .Member)", i, arg, err)
		}
		out[i] = b.String()
	}
	return out, nil
}

// CommonEnv is what every runtime gets: muster's own names and the
// de-facto standard ones that launchers read.
func CommonEnv(a Assignment) map[string]string {
	rank, world, gen := strconv.Itoa(a.Rank), strconv.Itoa(a.WorldSize), strconv.FormatInt(a.Generation, 10)
	port := strconv.Itoa(a.Port)
	env := map[string]string{
		"MUSTER_NAMESPACE":           a.Namespace,
		"MUSTER_GROUP":               a.Group,
		"MUSTER_MEMBER_ID":           a.Member,
		"MUSTER_RANK":                rank,
		"MUSTER_WORLD_SIZE":          world,
		"MUSTER_GENERATION":          gen,
		"MUSTER_LEADER_ADDR":         a.LeaderAddr,
		"MUSTER_MASTER_PORT":         port,
		"MUSTER_ADDRESS":             a.Address,
		"NODE_RANK":                  rank,
		"GROUP_RANK":                 rank,
		"NNODES":                     world,
		"MASTER_ADDR":                a.LeaderAddr,
		"MASTER_PORT":                port,
		"TORCHELASTIC_RESTART_COUNT": gen,
	}
	if a.Interface != "" {
		// NCCL picks the first non-loopback interface by itself, which in a
		// pod with several networks is often not the one that reaches the
		// peers; Gloo (torch.distributed's CPU backend, which vLLM and
		// SGLang also use) has its own variable.
		// https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html#nccl-socket-ifname
		// https://pytorch.org/docs/stable/distributed.html#common-environment-variables
		env["NCCL_SOCKET_IFNAME"] = a.Interface
		env["GLOO_SOCKET_IFNAME"] = a.Interface
	}
	return env
}

// insertAfter returns argv with flags inserted at index i.
func insertAfter(argv []string, i int, flags ...string) []string {
	out := make([]string, 0, len(argv)+len(flags))
	out = append(out, argv[:i]...)
	out = append(out, flags...)
	return append(out, argv[i:]...)
}
