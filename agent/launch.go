package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc/status"

	"github.com/muster-dev/muster/agent/preset"
	musterv1 "github.com/muster-dev/muster/proto/muster/v1"
)

// groupAssignment is the part of a preset assignment that is known before
// the barrier: who this member is and the group's shape, without a rank.
func (c *Config) groupAssignment() preset.Assignment {
	dir := c.Dir
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "muster", c.Namespace, c.Group, c.MemberID)
	}
	return preset.Assignment{
		Namespace: c.Namespace, Group: c.Group, Member: c.MemberID, WorldSize: c.Size,
		Address: c.Address, GPUsPerNode: c.GPUsPerNode, Interface: c.Interface, Dir: dir,
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
func writeFiles(dir string, files map[string][]byte) error {
	if len(files) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create the runtime's directory %s: %w", dir, err)
	}
	for name, content := range files {
		if !filepath.IsLocal(name) {
			return fmt.Errorf("runtime file %q is not a name inside %s", name, dir)
		}
		path := filepath.Join(dir, name)
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, content, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
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
