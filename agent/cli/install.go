package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// install copies the running agent binary to dest: the init container the
// webhook injects runs it to put the agent into a volume the model's
// container shares, whatever image that container uses.
func install(args []string, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: agent install DEST (the path to copy the agent binary to)")
		return 2
	}
	if err := copySelf(args[0]); err != nil {
		fmt.Fprintf(stderr, "agent install: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "agent installed at %s\n", args[0])
	return 0
}

func copySelf(dest string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	in, err := os.Open(self)
	if err != nil {
		return fmt.Errorf("open %s: %w", self, err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(dest), err)
	}
	// Write beside the destination and rename, so that a container never
	// sees a half-written agent.
	tmp, err := os.CreateTemp(filepath.Dir(dest), ".agent-*")
	if err != nil {
		return fmt.Errorf("write into %s: %w", filepath.Dir(dest), err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("copy to %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return fmt.Errorf("install %s: %w", dest, err)
	}
	return nil
}
