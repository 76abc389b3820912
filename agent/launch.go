package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/agent/preset"
	"github.com/muster-dev/muster/agent/process"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// groupAssignment is the part of a preset assignment that is known before
// the barrier: who this member is and the group's shape, without a rank.
// It makes this agent's private directory first if Run has not (see
// makeDir; p is c.Runtime's preset), once: Run's first call (preset.Check)
// sets c.Dir, and the agent's copy of the Config carries it to every
// launch, so every generation of the runtime finds its files in the same
// place.
func (c *Config) groupAssignment(p preset.Preset) preset.Assignment {
	if c.Dir == "" {
		if _, err := c.makeDir(p); err != nil && c.Logger != nil {
			// Dir stays empty and writeFiles refuses it: a runtime that
			// needs files fails at launch, one that needs none runs.
			c.Logger.Error("no directory for the runtime's files", "err", err)
		}
	}
	return preset.Assignment{
		Namespace: c.Namespace, Group: c.Group, Member: c.MemberID, WorldSize: c.Size,
		Address: c.Address, GPUsPerNode: c.GPUsPerNode, Interface: c.Interface, Dir: c.Dir,
	}
}

// makeDir sets c.Dir, when it is empty and the runtime's preset p writes
// files (ray's script, deepspeed's hostfile), to a new directory only this
// agent can enter: os.MkdirTemp makes it with mode 0700 and a random name
// under the system's temporary directory. A fixed path there (the old
// /tmp/muster/NS/GROUP/MEMBER) could be made first by any local user, or
// be a symbolic link to anywhere, and the agent, often root, wrote files
// there and ran ray.sh from it. remove deletes the directory made here and
// nothing else (a Dir the caller chose stays); Run should defer it.
func (c *Config) makeDir(p preset.Preset) (remove func(), err error) {
	if c.Dir != "" || p.Files == nil {
		return func() {}, nil
	}
	dir, err := os.MkdirTemp("", "muster-"+safeName(c.Group)+"-*")
	if err != nil {
		return func() {}, fmt.Errorf("create a private directory for the runtime's files under %s: %w; point TMPDIR at a directory the agent can write", os.TempDir(), err)
	}
	c.Dir = dir
	log := c.Logger
	return func() {
		if err := os.RemoveAll(dir); err != nil && log != nil {
			log.Warn("could not remove the runtime's directory", "dir", dir, "err", err)
		}
	}, nil
}

// safeName keeps the letters, digits, '.', '_' and '-' of s, at most 63
// of them: a group name that Validate accepted as it is, anything else
// made fit for a file name.
func safeName(s string) string {
	b := []byte(s)
	out := b[:0]
	for _, ch := range b {
		if ch == '.' || ch == '_' || ch == '-' || '0' <= ch && ch <= '9' || 'a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z' {
			out = append(out, ch)
		}
	}
	return string(out[:min(len(out), 63)])
}

// launch starts the runtime with the rank and leader of assignment as.
func (a *agent) launch(ctx context.Context, as *musterv1.Assignment) (*process.Process, error) {
	asg := a.cfg.groupAssignment(a.preset)
	asg.Rank, asg.WorldSize, asg.Generation = int(as.GetRank()), int(as.GetWorldSize()), as.GetGeneration()
	asg.LeaderAddr, asg.Port = as.GetLeaderAddress(), int(as.GetMasterPort())
	if a.preset.NeedsPeers {
		peers, err := a.peers(ctx, asg.Generation, asg.WorldSize)
		if err != nil {
			return nil, err
		}
		asg.Peers = peers
	}
	cmd, err := preset.Build(a.cfg.Runtime, asg, a.cfg.Command)
	if err != nil {
		return nil, err
	}
	if err := writeFiles(asg.Dir, cmd.Files); err != nil {
		return nil, err
	}
	a.log.Info("barrier released; launching runtime", "generation", asg.Generation, "rank", asg.Rank, "world_size", asg.WorldSize,
		"master_addr", asg.LeaderAddr, "master_port", asg.Port, "command", fmt.Sprint(cmd.Argv))
	return process.Start(cmd.Argv, cmd.Env, a.cfg.Stdout, a.cfg.Stderr)
}

// watchReady reports the runtime ready: on the leader with --port, once it
// accepts connections there; otherwise once it runs.
func (a *agent) watchReady(ctx context.Context, p *process.Process, as *musterv1.Assignment, gen int64, ready chan<- int64) {
	if a.cfg.ReadyPort > 0 && as.GetRank() == 0 {
		addr := net.JoinHostPort(a.cfg.Address, strconv.Itoa(a.cfg.ReadyPort))
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-p.Done():
				return
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	select {
	case <-p.Done():
		return
	default:
	}
	// The main loop reports it, so that a ready report can never overtake
	// the exit report of a runtime that ended meanwhile.
	select {
	case ready <- gen:
	case <-p.Done():
	case <-ctx.Done():
	}
}

// peers returns every member's address in rank order for generation gen.
// The Assignment message carries only the leader's address, so they come
// from the coordinator's view of the group, which holds the ranks of the
// generation the barrier released.
func (a *agent) peers(ctx context.Context, gen int64, size int) ([]string, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	g, err := a.client.GetGroup(cctx, &musterv1.GetGroupRequest{Group: a.ref})
	if err != nil {
		return nil, fmt.Errorf("list the group's members for the runtime's peer list: %s", status.Convert(err).Message())
	}
	if g.GetGeneration() != gen {
		return nil, fmt.Errorf("list the group's members for generation %d: the group is at generation %d", gen, g.GetGeneration())
	}
	peers := make([]string, size)
	for _, m := range g.GetMembers() {
		if r := int(m.GetRank()); r >= 0 && r < size && m.GetLive() && m.GetGeneration() == gen {
			peers[r] = m.GetAddress()
		}
	}
	for r, addr := range peers {
		if addr == "" {
			return nil, fmt.Errorf("list the group's members for generation %d: no live member holds rank %d", gen, r)
		}
	}
	return peers, nil
}

// writeFiles writes a preset's generated files into dir, each through a
// temporary file and a rename so that a runtime never reads half a file.
// Nothing in dir is followed: the temporary file is created new
// (os.CreateTemp: O_CREATE|O_EXCL, which fails on an existing name or
// link), and the rename replaces whatever link stood at the final name
// instead of writing through it. The files are 0600, for the runtime runs
// as the agent's own user.
func writeFiles(dir string, files map[string][]byte) error {
	if len(files) == 0 {
		return nil
	}
	if dir == "" {
		return errors.New("no directory for the runtime's files: the agent could not make one (see the error logged before); point TMPDIR at a directory the agent can write")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create the runtime's directory %s: %w", dir, err)
	}
	for name, content := range files {
		if !filepath.IsLocal(name) || filepath.Base(name) != name {
			return fmt.Errorf("runtime file %q is not a name inside %s", name, dir)
		}
		if err := writeFile(dir, name, content); err != nil {
			return err
		}
	}
	return nil
}

// writeFile writes dir/name through a new temporary file in dir.
func writeFile(dir, name string, content []byte) error {
	path := filepath.Join(dir, name)
	f, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// warnServiceLinks logs every environment variable that Kubernetes
// injected for a Service and that the runtime would read as its own
// setting (a Service named vllm sets VLLM_PORT=tcp://..., which vLLM
// fails on).
func warnServiceLinks(log *slog.Logger, runtime string, environ []string) {
	for _, l := range preset.ServiceLinks(runtime, environ) {
		log.Warn(fmt.Sprintf("environment variable %s=%s comes from the Kubernetes Service %q and collides with the variables %s reads; set enableServiceLinks: false in the pod spec (or rename the Service)", l.Var, l.Value, l.Service, runtime),
			"variable", l.Var, "service", l.Service, "fix", "enableServiceLinks: false")
	}
}
