// Package version says which build of muster a binary is: its version,
// the commit it was built from, and the Go and Kubernetes versions it was
// built with. Every binary prints it for --version.
package version

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// Version is muster's release, set at build time:
//
//	go build -ldflags "-X github.com/muster-dev/muster/internal/version.Version=v0.3.0"
//
// (make build sets it from `git describe`). "dev" otherwise.
var Version = "dev"

// Commit is the revision, set at build time the same way (make build sets
// it from `git rev-parse`, since GOFLAGS=-buildvcs=false or a build outside
// a checkout leaves the binary without one); empty: what the Go toolchain
// recorded, if anything.
var Commit = ""

// Info is what a build says about itself.
type Info struct {
	Version string `json:"version"`
	// Commit is the VCS revision the binary was built from, with
	// "-dirty" when the tree had uncommitted changes; "unknown" when the
	// build recorded none (go build -buildvcs=false, or not in a checkout).
	Commit string `json:"commit"`
	Go     string `json:"go"`
	// Kubernetes is the Kubernetes release of the client libraries the
	// binary links (k8s.io/client-go v0.X.Y is Kubernetes 1.X.Y); "" when
	// it links none.
	Kubernetes string `json:"kubernetes,omitempty"`
}

// Get reads the running binary's build information.
func Get() Info {
	info := Info{Version: Version, Commit: "unknown", Go: "unknown"}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	info.Go = bi.GoVersion
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	switch {
	case Commit != "":
		info.Commit = Commit
	case rev != "":
		info.Commit = rev
		if modified == "true" {
			info.Commit += "-dirty"
		}
	}
	for _, d := range bi.Deps {
		if d.Path != "k8s.io/client-go" {
			continue
		}
		v := d.Version
		if d.Replace != nil && d.Replace.Version != "" {
			v = d.Replace.Version
		}
		info.Kubernetes = kubernetesRelease(v)
	}
	return info
}

// kubernetesRelease turns a staging module's version (v0.37.2) into the
// Kubernetes release it belongs to (v1.37.2).
func kubernetesRelease(v string) string {
	if rest, ok := strings.CutPrefix(v, "v0."); ok {
		return "v1." + rest
	}
	return v
}

// String is the line --version prints for binary.
func (i Info) String(binary string) string {
	s := fmt.Sprintf("%s %s (commit %s, %s", binary, i.Version, i.Commit, i.Go)
	if i.Kubernetes != "" {
		s += ", Kubernetes " + i.Kubernetes
	}
	return s + ")"
}
