// Package test holds what tests share (clustertest, podbuilder) and this
// test of the import direction between muster's top-level packages.
package test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/muster-dev/muster"

// pkg is what `go list -json` says of one package. Imports and Deps are
// the package's own, without its tests': a test may import anything.
type pkg struct {
	ImportPath string
	Name       string
	Imports    []string
	Deps       []string
}

// rule forbids packages that from matches to depend on packages forbid
// matches, directly or through others.
type rule struct {
	why    string
	from   func(p *pkg) bool
	forbid func(dep string) bool
}

var rules = []rule{
	{
		why:    "product code does not import test support, the end-to-end harness or the benchmarks",
		from:   func(p *pkg) bool { return !under(p.ImportPath, "test", "e2e", "bench") },
		forbid: func(dep string) bool { return under(dep, "test", "e2e", "bench") },
	},
	{
		why:    "no binary links test support (make cluster's local control plane included)",
		from:   func(p *pkg) bool { return p.Name == "main" },
		forbid: func(dep string) bool { return under(dep, "test") },
	},
	{
		why:    "podapi is the pod contract every component reads; it imports no other muster package but its own names",
		from:   func(p *pkg) bool { return under(p.ImportPath, "podapi") },
		forbid: func(dep string) bool { return !under(dep, "podapi") },
	},
	{
		why:    "the agent reaches the coordinator over gRPC and never the scheduler",
		from:   func(p *pkg) bool { return under(p.ImportPath, "agent") },
		forbid: func(dep string) bool { return under(dep, "coordinator", "scheduler-plugin") },
	},
	{
		why:    "the coordinator takes names from podapi, not from the agent or the scheduler",
		from:   func(p *pkg) bool { return under(p.ImportPath, "coordinator") },
		forbid: func(dep string) bool { return under(dep, "agent", "scheduler-plugin") },
	},
	{
		why:    "the scheduler plugin takes names from podapi, not from the agent or the coordinator",
		from:   func(p *pkg) bool { return under(p.ImportPath, "scheduler-plugin") },
		forbid: func(dep string) bool { return under(dep, "agent", "coordinator") },
	},
}

// The agent binary is copied into every pod by the webhook's init
// container: it takes the pod contract's names from podapi/names and does
// not link Kubernetes' API types (k8s.io/api: 9 MB of a 31 MB binary).
func TestAgentLinksNoKubernetesAPITypes(t *testing.T) {
	p := list(t)[module+"/agent/cmd/agent"]
	if p == nil {
		t.Fatal("go list did not list agent/cmd/agent")
	}
	if bad := kubernetesAPIDeps(p); len(bad) > 0 {
		t.Fatalf("the agent links %s: import podapi/names instead of podapi (or whatever pulled these in)", strings.Join(bad, ", "))
	}
	if bad := kubernetesAPIDeps(&pkg{Deps: []string{"k8s.io/api/core/v1", "fmt"}}); len(bad) != 1 {
		t.Fatalf("kubernetesAPIDeps found %v in a package linking k8s.io/api/core/v1", bad)
	}
}

func kubernetesAPIDeps(p *pkg) []string {
	var out []string
	for _, d := range p.Deps {
		if strings.HasPrefix(d, "k8s.io/api/") {
			out = append(out, d)
		}
	}
	return out
}

// under reports whether path is one of muster's top-level dirs or below it.
func under(path string, dirs ...string) bool {
	for _, d := range dirs {
		d = module + "/" + d
		if path == d || strings.HasPrefix(path, d+"/") {
			return true
		}
	}
	return false
}

// TestImportDirection checks that no package imports upward (see rules),
// with `go list -deps`' view of each package's non-test imports.
func TestImportDirection(t *testing.T) {
	pkgs := list(t)
	if len(pkgs) < 10 || pkgs[module+"/podapi"] == nil {
		t.Fatalf("go list found %d muster packages, podapi among them: %v; want the whole module", len(pkgs), pkgs[module+"/podapi"] != nil)
	}
	violations := check(pkgs)
	for _, v := range violations {
		t.Error(v)
	}
}

// check returns one line for every package and forbidden dependency.
func check(pkgs map[string]*pkg) []string {
	var out []string
	for _, path := range slices.Sorted(maps.Keys(pkgs)) {
		p := pkgs[path]
		for _, r := range rules {
			if !r.from(p) {
				continue
			}
			for _, dep := range p.Deps {
				if dep != path && pkgs[dep] != nil && r.forbid(dep) {
					out = append(out, strings.Join(chain(pkgs, path, dep), " -> ")+": "+r.why)
				}
			}
		}
	}
	return out
}

// chain is the shortest import path from one muster package to another.
func chain(pkgs map[string]*pkg, from, to string) []string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		if cur == to {
			var path []string
			for ; cur != ""; cur = prev[cur] {
				path = append(path, strings.TrimPrefix(cur, module+"/"))
			}
			slices.Reverse(path)
			return path
		}
		if pkgs[cur] == nil {
			continue
		}
		for _, next := range pkgs[cur].Imports {
			if _, seen := prev[next]; !seen && pkgs[next] != nil {
				prev[next] = cur
				queue = append(queue, next)
			}
		}
	}
	return []string{from, "...", to}
}

// list runs go list over the module and returns its packages by import path.
func list(t *testing.T) map[string]*pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json=ImportPath,Name,Imports,Deps", module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	pkgs := map[string]*pkg{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		pkgs[p.ImportPath] = &p
	}
	return pkgs
}

// TestCheckFindsUpwardImports feeds check a module that breaks every rule,
// so that a rule that matches nothing cannot pass unnoticed.
func TestCheckFindsUpwardImports(t *testing.T) {
	graph := map[string][]string{
		"podapi":                 {"pki"},
		"pki":                    nil,
		"agent":                  {"podapi", "agent/preset"},
		"agent/preset":           {"coordinator/rendezvous"},
		"coordinator/rendezvous": {"scheduler-plugin/gang"},
		"scheduler-plugin/gang":  {"agent/preset", "test/podbuilder"},
		"test/podbuilder":        {"podapi"},
		"e2e/cmd/cluster":        {"test/podbuilder"},
	}
	pkgs := map[string]*pkg{}
	for path, imports := range graph {
		p := &pkg{ImportPath: module + "/" + path, Name: "lib"}
		for _, i := range imports {
			p.Imports = append(p.Imports, module+"/"+i)
		}
		pkgs[p.ImportPath] = p
	}
	pkgs[module+"/e2e/cmd/cluster"].Name = "main"
	// Deps as go list gives them: everything reachable, the standard
	// library too.
	for _, p := range pkgs {
		seen := map[string]bool{}
		var walk func(string)
		walk = func(path string) {
			for _, i := range pkgs[path].Imports {
				if !seen[i] {
					seen[i] = true
					walk(i)
				}
			}
		}
		walk(p.ImportPath)
		p.Deps = append(slices.Sorted(maps.Keys(seen)), "fmt")
	}
	got := check(pkgs)
	for _, want := range []string{
		"podapi -> pki: podapi",
		"agent -> agent/preset -> coordinator/rendezvous: the agent",
		"agent -> agent/preset -> coordinator/rendezvous -> scheduler-plugin/gang: the agent",
		"coordinator/rendezvous -> scheduler-plugin/gang -> agent/preset: the coordinator",
		"scheduler-plugin/gang -> agent/preset -> coordinator/rendezvous: the scheduler plugin",
		"scheduler-plugin/gang -> test/podbuilder: product code",
		"e2e/cmd/cluster -> test/podbuilder: no binary",
	} {
		if !slices.ContainsFunc(got, func(v string) bool { return strings.HasPrefix(v, want) }) {
			t.Errorf("no violation %q among:\n%s", want, strings.Join(got, "\n"))
		}
	}
	if slices.ContainsFunc(got, func(v string) bool { return strings.HasPrefix(v, "test/") }) {
		t.Errorf("test support may import anything, yet:\n%s", strings.Join(got, "\n"))
	}
}
