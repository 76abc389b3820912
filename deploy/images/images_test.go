package images

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"sigs.k8s.io/yaml"

	"github.com/muster-dev/muster/coordinator/webhook"
)

const (
	testVersion = "v0.0.0-imagetest"
	testCommit  = "0123456789abcdef0123456789abcdef01234567"
)

// TestImagesRunFromTheirRootFS builds every image for this machine's
// platform through Build, as `make images` does (the Go build cache makes
// a rebuild cheap), reads each back from its OCI layout, unpacks its
// layers into a root file system and runs its entrypoint from there as
// the image's user: --version, --help, and the agent's install.
func TestImagesRunFromTheirRootFS(t *testing.T) {
	if runtime.GOOS != "linux" || (runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64") {
		t.Skipf("the images' binaries run on linux/amd64 and linux/arm64, not %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	if testing.Short() {
		t.Skip("-short: building the images compiles three static binaries, minutes on a cold build cache (make test runs it)")
	}
	root := moduleRoot(t)
	host := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	kubeVersion := makeVar(t, root, "KUBE_VERSION")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	out := t.TempDir()
	built, err := Build(ctx, Options{
		ModuleDir: root,
		OutDir:    out,
		Version:   testVersion,
		Commit:    testCommit,
		LDFlags: "-X github.com/muster-dev/muster/internal/version.Version=" + testVersion +
			" -X github.com/muster-dev/muster/internal/version.Commit=" + testCommit,
		KubeLDFlags: "-X k8s.io/component-base/version.gitVersion=" + kubeVersion,
		Platforms:   []v1.Platform{host},
		Log:         t.Output(),
	})
	if err != nil {
		t.Fatal(err)
	}
	tag, err := ChartAppVersion(root)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(built); !slices.Equal(got, []string{"coordinator", "agent", "scheduler"}) {
		t.Fatalf("built %v, want coordinator, agent, scheduler", got)
	}
	for _, b := range built {
		t.Run(b.Image.Name, func(t *testing.T) {
			if want := DefaultRegistry + "/muster-" + b.Image.Name + ":" + tag; b.Ref != want {
				t.Errorf("ref %s, want %s", b.Ref, want)
			}
			img, cf := readLayout(t, b, tag, host)
			uid, gid := checkConfig(t, b.Image, cf, host)
			rootfs := unpack(t, img, uid, gid, b.Image)
			bin := filepath.Join(rootfs, cf.Config.Entrypoint[0])
			if err := CheckStatic(bin, host); err != nil {
				t.Error(err)
			}

			run := func(args ...string) string {
				t.Helper()
				out, err := runAs(ctx, rootfs, cf, uid, gid, args...)
				if err != nil {
					t.Fatalf("%s %s: %v\n%s", cf.Config.Entrypoint[0], strings.Join(args, " "), err, out)
				}
				return out
			}
			v := run("--version")
			if want := b.Image.Name + " " + testVersion + " (commit " + testCommit; !strings.Contains(v, want) {
				t.Errorf("--version says %q, want %q", v, want)
			}
			if h := run("--help"); !strings.Contains(h, "Usage") && !strings.Contains(h, "Flags") {
				t.Errorf("--help says no usage:\n%s", h)
			}
			switch b.Image.Name {
			case "agent":
				// What the webhook's init container does, then the copy runs.
				dest := filepath.Join(filepath.Dir(rootfs), "shared", "bin", "agent")
				mkdirOwned(t, filepath.Dir(filepath.Dir(dest)), uid, gid)
				run("install", dest)
				out, err := exec.CommandContext(ctx, dest, "--version").CombinedOutput()
				if err != nil || !strings.Contains(string(out), "agent "+testVersion) {
					t.Errorf("the installed agent: %v, %q", err, out)
				}
			case "scheduler":
				// kube-scheduler's own --version: KubeLDFlags reached it.
				if raw := run("--version=raw"); !strings.Contains(raw, `"gitVersion": "`+kubeVersion+`"`) &&
					!strings.Contains(raw, `GitVersion:"`+kubeVersion+`"`) {
					t.Errorf("--version=raw does not say gitVersion %s:\n%s", kubeVersion, raw)
				}
			}
		})
	}
}

// readLayout reads b's layout back: one index named tag, valid, whose
// images are for want only.
func readLayout(t *testing.T, b Built, tag string, want v1.Platform) (v1.Image, *v1.ConfigFile) {
	t.Helper()
	p, err := layout.FromPath(b.Layout)
	if err != nil {
		t.Fatal(err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	tm, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(tm.Manifests) != 1 {
		t.Fatalf("index.json has %d entries, want one", len(tm.Manifests))
	}
	d := tm.Manifests[0]
	if d.MediaType != types.OCIImageIndex || d.Digest != b.Digest {
		t.Errorf("index.json names a %s %s, want the image index %s", d.MediaType, d.Digest, b.Digest)
	}
	if d.Annotations["org.opencontainers.image.ref.name"] != tag || d.Annotations["io.containerd.image.name"] != b.Ref {
		t.Errorf("index.json's annotations %v, want ref.name %s and io.containerd.image.name %s", d.Annotations, tag, b.Ref)
	}
	idx, err := top.ImageIndex(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(idx); err != nil {
		t.Fatalf("the layout's index is not valid: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(im.Annotations, b.Image.Labels(testVersion, testCommit)) {
		t.Errorf("index annotations %v, want the labels", im.Annotations)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Platform == nil || !im.Manifests[0].Platform.Equals(want) {
		t.Fatalf("index manifests %+v, want one for %s", im.Manifests, want)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return img, cf
}

// checkConfig checks what the image runs, as whom; it returns the user.
func checkConfig(t *testing.T, img Image, cf *v1.ConfigFile, p v1.Platform) (uid, gid int) {
	t.Helper()
	if cf.OS != p.OS || cf.Architecture != p.Architecture {
		t.Errorf("config for %s/%s, want %s", cf.OS, cf.Architecture, p)
	}
	c := cf.Config
	if !slices.Equal(c.Entrypoint, []string{"/muster/" + img.Name}) || len(c.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want [/muster/%s] and no cmd", c.Entrypoint, c.Cmd, img.Name)
	}
	u, g, ok := strings.Cut(c.User, ":")
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if !ok || err1 != nil || err2 != nil {
		t.Fatalf("user %q, want numeric uid:gid (runAsNonRoot cannot check a name)", c.User)
	}
	if uid == 0 || gid == 0 || uid != 65532 || gid != 65532 {
		t.Errorf("user %q, want 65532:65532 (non-root, the chart's runAsUser)", c.User)
	}
	if c.WorkingDir != "/home/nonroot" || !slices.Contains(c.Env, "PATH=/muster:/usr/local/bin:/usr/bin:/bin") {
		t.Errorf("working dir %q env %q", c.WorkingDir, c.Env)
	}
	want := map[string]string{
		"org.opencontainers.image.source":      "https://github.com/muster-dev/muster",
		"org.opencontainers.image.title":       "muster-" + img.Name,
		"org.opencontainers.image.description": img.Description,
		"org.opencontainers.image.version":     testVersion,
		"org.opencontainers.image.revision":    testCommit,
	}
	if !maps.Equal(c.Labels, want) {
		t.Errorf("labels %v, want %v", c.Labels, want)
	}
	return uid, gid
}

// unpack extracts img's layers in order into a new directory (owned as the
// layers say when the test runs as root) and checks the files every image
// has: it returns the root file system.
func unpack(t *testing.T, img v1.Image, uid, gid int, want Image) string {
	t.Helper()
	base := t.TempDir()
	if os.Geteuid() == 0 {
		// The image's user must reach its root file system.
		for _, d := range []string{base, filepath.Dir(base)} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	rootfs := filepath.Join(base, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	headers := map[string]*tar.Header{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			name := path.Clean(h.Name)
			if path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") || strings.Contains(path.Base(name), ".wh.") {
				t.Fatalf("layer entry %q: not a plain path", h.Name)
			}
			headers[name] = h
			dst := filepath.Join(rootfs, filepath.FromSlash(name))
			switch h.Typeflag {
			case tar.TypeDir:
				if err := os.MkdirAll(dst, 0o755); err != nil {
					t.Fatal(err)
				}
			case tar.TypeReg:
				f, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.Copy(f, tr); err != nil {
					t.Fatal(err)
				}
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("layer entry %q: type %q; the images have only files and directories", h.Name, h.Typeflag)
			}
			if err := os.Chmod(dst, h.FileInfo().Mode()&(os.ModePerm|os.ModeSticky|os.ModeSetuid|os.ModeSetgid)); err != nil {
				t.Fatal(err)
			}
			if os.Geteuid() == 0 {
				if err := os.Lchown(dst, h.Uid, h.Gid); err != nil {
					t.Fatal(err)
				}
			}
		}
		rc.Close()
	}

	// The binary: root's, not writable by the user who runs it.
	bin := strings.TrimPrefix(want.Binary(), "/")
	if h := headers[bin]; h == nil || h.Typeflag != tar.TypeReg || h.Uid != 0 || h.Mode&0o777 != 0o755 {
		t.Errorf("%s: %+v, want a file owned by root, mode 0755", bin, h)
	}
	if h := headers["home/nonroot"]; h == nil || h.Uid != uid || h.Gid != gid {
		t.Errorf("home/nonroot: %+v, want the user's", h)
	}
	if h := headers["tmp"]; h == nil || h.Typeflag != tar.TypeDir || h.Mode&0o1777 != 0o1777 {
		t.Errorf("tmp: %+v, want a directory with mode 1777", h)
	}
	// /etc/passwd names the config's user, with the working directory as
	// its home: a non-root user any tool can look up.
	passwd, err := os.ReadFile(filepath.Join(rootfs, "etc", "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, line := range strings.Split(strings.TrimSpace(string(passwd)), "\n") {
		f := strings.Split(line, ":")
		if len(f) == 7 && f[2] == strconv.Itoa(uid) {
			found = f[0] != "root" && f[3] == strconv.Itoa(gid) && f[5] == Home
		}
	}
	if !found {
		t.Errorf("/etc/passwd has no non-root user %d:%d with home %s:\n%s", uid, gid, Home, passwd)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "etc", "group")); err != nil {
		t.Error(err)
	}
	return rootfs
}

// runAs runs the config's entrypoint from rootfs with args, in its working
// directory and environment, as uid:gid when the test may switch users.
func runAs(ctx context.Context, rootfs string, cf *v1.ConfigFile, uid, gid int, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ep := cf.Config.Entrypoint
	cmd := exec.CommandContext(ctx, filepath.Join(rootfs, ep[0]), append(slices.Clone(ep[1:]), args...)...)
	cmd.Dir = filepath.Join(rootfs, cf.Config.WorkingDir)
	cmd.Env = append(slices.Clone(cf.Config.Env), "HOME="+cmd.Dir, "TMPDIR="+filepath.Join(rootfs, "tmp"))
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}}
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mkdirOwned(t *testing.T, dir string, uid, gid int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBuildEveryPlatform builds every image for every platform of `make
// images` with go build replaced by a stub that writes an ELF header for
// the platform: the commands (cross-compiled, static, -trimpath, the
// ldflags), the index (one image per platform) and each image's config
// and layers, without compiling for arm64.
func TestBuildEveryPlatform(t *testing.T) {
	root := moduleRoot(t)
	var cmds []*exec.Cmd
	built, err := Build(context.Background(), Options{
		ModuleDir: root, OutDir: t.TempDir(), Registry: "registry.example/team", Tag: "9.9.9",
		Version: testVersion, LDFlags: "-X main.a=b", KubeLDFlags: "-X k8s.io/x.y=z",
		Created: time.Unix(1700000000, 0).UTC(),
		compile: func(cmd *exec.Cmd, p v1.Platform, out string) error {
			cmds = append(cmds, cmd)
			m, _ := elfMachine(p)
			return os.WriteFile(out, fakeELF(m, ""), 0o755)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(cmds) != len(Images)*len(Platforms) {
		t.Fatalf("%d go builds, want %d", len(cmds), len(Images)*len(Platforms))
	}
	i := 0
	for _, img := range Images {
		for _, p := range Platforms {
			checkGoBuild(t, cmds[i], root, img, p)
			i++
		}
	}
	for _, b := range built {
		if want := "registry.example/team/muster-" + b.Image.Name + ":9.9.9"; b.Ref != want {
			t.Errorf("ref %s, want %s", b.Ref, want)
		}
		p, err := layout.FromPath(b.Layout)
		if err != nil {
			t.Fatal(err)
		}
		top, err := p.ImageIndex()
		if err != nil {
			t.Fatal(err)
		}
		idx, err := top.ImageIndex(b.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Index(idx); err != nil {
			t.Fatal(err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range im.Manifests {
			got = append(got, d.Platform.String())
			img, err := idx.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.Architecture != d.Platform.Architecture || cf.OS != "linux" || !cf.Created.Equal(time.Unix(1700000000, 0)) {
				t.Errorf("%s %s: config for %s/%s created %s", b.Image.Name, d.Platform, cf.OS, cf.Architecture, cf.Created)
			}
			if cf.Config.User != User || !slices.Equal(cf.Config.Entrypoint, []string{b.Image.Binary()}) {
				t.Errorf("%s %s: user %q entrypoint %q", b.Image.Name, d.Platform, cf.Config.User, cf.Config.Entrypoint)
			}
			layers, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}
			if len(layers) != 2 || len(cf.History) != 2 {
				t.Fatalf("%s %s: %d layers, %d history entries, want 2 (base, binary)", b.Image.Name, d.Platform, len(layers), len(cf.History))
			}
			names := layerNames(t, layers[1])
			if !slices.Equal(names, []string{"muster/", "muster/" + b.Image.Name}) {
				t.Errorf("%s %s: binary layer %v", b.Image.Name, d.Platform, names)
			}
		}
		if !slices.Equal(got, []string{"linux/amd64", "linux/arm64"}) {
			t.Errorf("%s: index for %v, want linux/amd64 and linux/arm64", b.Image.Name, got)
		}
	}
	// The base layer is one blob for every image and platform.
	digests := map[v1.Hash]bool{}
	for _, b := range built {
		p, _ := layout.FromPath(b.Layout)
		top, _ := p.ImageIndex()
		idx, _ := top.ImageIndex(b.Digest)
		im, _ := idx.IndexManifest()
		for _, d := range im.Manifests {
			img, _ := idx.Image(d.Digest)
			m, err := img.Manifest()
			if err != nil {
				t.Fatal(err)
			}
			digests[m.Layers[0].Digest] = true
		}
	}
	if len(digests) != 1 {
		t.Errorf("%d different base layers, want one", len(digests))
	}
}

// checkGoBuild checks one go build command: img's package for p, static,
// -trimpath, with the ldflags for img.
func checkGoBuild(t *testing.T, cmd *exec.Cmd, root string, img Image, p v1.Platform) {
	t.Helper()
	env := map[string]string{}
	for _, kv := range cmd.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v // the last value wins, as for exec
	}
	if env["CGO_ENABLED"] != "0" || env["GOOS"] != p.OS || env["GOARCH"] != p.Architecture {
		t.Errorf("%s %s: CGO_ENABLED=%q GOOS=%q GOARCH=%q", img.Name, p, env["CGO_ENABLED"], env["GOOS"], env["GOARCH"])
	}
	args := cmd.Args[1:]
	ldflags := "-X main.a=b"
	if img.Name == "scheduler" {
		ldflags = "-X k8s.io/x.y=z -X main.a=b"
	}
	i := slices.Index(args, "-ldflags")
	if args[0] != "build" || !slices.Contains(args, "-trimpath") || i < 0 || args[i+1] != ldflags ||
		args[len(args)-1] != img.Package || cmd.Dir != root {
		t.Errorf("%s %s: go %q in %s", img.Name, p, args, cmd.Dir)
	}
}

// TestBuildRefusesWhatCannotRun: a binary that needs a dynamic loader, or
// one for another machine, would not start on an empty base.
func TestBuildRefusesWhatCannotRun(t *testing.T) {
	root := moduleRoot(t)
	agent, _ := Lookup("agent")
	for name, tc := range map[string]struct {
		machine elf.Machine
		interp  string
		want    string
	}{
		"dynamic":     {elf.EM_X86_64, "/lib64/ld-linux-x86-64.so.2", "dynamically linked"},
		"other-arch":  {elf.EM_AARCH64, "", "built for EM_AARCH64, not EM_X86_64"},
		"not-elf-bin": {0, "", "not an ELF executable"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Build(context.Background(), Options{
				ModuleDir: root, OutDir: t.TempDir(), Tag: "x", Images: []Image{agent},
				Platforms: []v1.Platform{{OS: "linux", Architecture: "amd64"}},
				compile: func(_ *exec.Cmd, _ v1.Platform, out string) error {
					data := fakeELF(tc.machine, tc.interp)
					if tc.machine == 0 {
						data = []byte("#!/bin/sh\n")
					}
					return os.WriteFile(out, data, 0o755)
				},
			})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Build: %v, want an error saying %q", err, tc.want)
			}
		})
	}
	_, err := Build(context.Background(), Options{ModuleDir: root, OutDir: t.TempDir(), Tag: "x",
		Platforms: []v1.Platform{{OS: "linux", Architecture: "riscv64"}}})
	if err == nil || !strings.Contains(err.Error(), "only linux/amd64 and linux/arm64") {
		t.Errorf("Build for riscv64: %v", err)
	}
	_, err = Build(context.Background(), Options{ModuleDir: root, OutDir: t.TempDir(), Tag: "x", Images: []Image{agent},
		Platforms: []v1.Platform{{OS: "linux", Architecture: "amd64"}},
		compile:   func(*exec.Cmd, v1.Platform, string) error { return errors.New("exit status 1") }})
	if err == nil || !strings.Contains(err.Error(), "go build ./agent/cmd/agent (GOOS=linux GOARCH=amd64 CGO_ENABLED=0") {
		t.Errorf("a failed go build: %v", err)
	}
}

// TestChartValuesNameTheBuiltImages: the chart pulls what `make images`
// names, runs it as the images' user, and the webhook's init container
// finds the agent where the agent image keeps it.
func TestChartValuesNameTheBuiltImages(t *testing.T) {
	root := moduleRoot(t)
	data, err := os.ReadFile(filepath.Join(root, ChartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(data, &values); err != nil {
		t.Fatal(err)
	}
	appVersion, err := ChartAppVersion(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range Images {
		v, _ := values[img.Name].(map[string]any)
		image, _ := v["image"].(map[string]any)
		repo, _ := image["repository"].(string)
		tag, _ := image["tag"].(string)
		if repo != img.Repository(DefaultRegistry) {
			t.Errorf("values.yaml %s.image.repository %q, but make images names it %q", img.Name, repo, img.Repository(DefaultRegistry))
		}
		// "" is the chart's appVersion (muster.image), the tag Build
		// defaults to.
		if tag != "" && tag != appVersion {
			t.Errorf("values.yaml %s.image.tag %q, but make images tags the chart's appVersion %q", img.Name, tag, appVersion)
		}
	}
	// Every image of muster's registry that the chart names is built.
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		m, ok := v.(map[string]any)
		if !ok {
			return
		}
		if repo, ok := m["repository"].(string); ok && strings.HasPrefix(repo, DefaultRegistry+"/") {
			name := strings.TrimPrefix(repo, DefaultRegistry+"/muster-")
			if _, ok := Lookup(name); !ok {
				t.Errorf("values.yaml %s names %s, which make images does not build", prefix, repo)
			}
		}
		for k, sub := range m {
			walk(prefix+"."+k, sub)
		}
	}
	walk("", values)

	helpers, err := os.ReadFile(filepath.Join(root, ChartDir, "templates", "_helpers.tpl"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{fmt.Sprintf("runAsUser: %d", UID), fmt.Sprintf("runAsGroup: %d", GID), "runAsNonRoot: true",
		"default .ctx.Chart.AppVersion .image.tag"} {
		if !strings.Contains(string(helpers), want) {
			t.Errorf("_helpers.tpl lacks %q: the chart and the images disagree", want)
		}
	}
	agent, _ := Lookup("agent")
	if agent.Binary() != webhook.ImageAgentPath {
		t.Errorf("the agent image keeps its binary at %s, the webhook's init container runs %s", agent.Binary(), webhook.ImageAgentPath)
	}
}

// TestDockerfilesSayWhatTheBuilderDoes: each Dockerfile builds the same
// binary the same way and lays it out as Build does.
func TestDockerfilesSayWhatTheBuilderDoes(t *testing.T) {
	root := moduleRoot(t)
	kubeVersion := makeVar(t, root, "KUBE_VERSION")
	for _, img := range Images {
		t.Run(img.Name, func(t *testing.T) {
			file := filepath.Join(root, "deploy", "images", img.Name+".Dockerfile")
			instrs := dockerfile(t, file)
			final := -1
			for i, in := range instrs {
				if in[0] == "FROM" {
					final = i
				}
			}
			if final < 0 || instrs[final][1] != "scratch" {
				t.Fatalf("the final stage is not FROM scratch")
			}
			got := map[string]string{}
			for _, in := range instrs[final+1:] {
				if in[0] == "COPY" || in[0] == "ARG" {
					got[in[0]] += in[1] + "\n"
					continue
				}
				got[in[0]] = in[1]
			}
			var ep []string
			if err := json.Unmarshal([]byte(got["ENTRYPOINT"]), &ep); err != nil || !slices.Equal(ep, []string{img.Binary()}) {
				t.Errorf("ENTRYPOINT %s, want [%q]", got["ENTRYPOINT"], img.Binary())
			}
			if got["USER"] != User || got["WORKDIR"] != Home || got["ENV"] != PathEnv {
				t.Errorf("USER %q WORKDIR %q ENV %q, want %q %q %q", got["USER"], got["WORKDIR"], got["ENV"], User, Home, PathEnv)
			}
			labels := map[string]string{}
			for _, m := range regexp.MustCompile(`([\w.-]+)="([^"]*)"`).FindAllStringSubmatch(got["LABEL"], -1) {
				labels[m[1]] = m[2]
			}
			want := img.Labels("${VERSION}", "${COMMIT}")
			if !maps.Equal(labels, want) {
				t.Errorf("LABEL %v, want %v", labels, want)
			}
			if !strings.Contains(got["COPY"], "--from=build /out/muster/ /muster/") || !strings.Contains(got["COPY"], "--from=build /rootfs/ /") {
				t.Errorf("the final stage copies %q", got["COPY"])
			}

			var build strings.Builder
			for _, in := range instrs[:final] {
				build.WriteString(in[0] + " " + in[1] + "\n")
			}
			b := build.String()
			for _, want := range []string{
				"CGO_ENABLED=0", "GOOS=$TARGETOS GOARCH=$TARGETARCH", "go build -trimpath -buildvcs=false",
				"-X github.com/muster-dev/muster/internal/version.Version=${VERSION}",
				"-X github.com/muster-dev/muster/internal/version.Commit=${COMMIT}",
				"-o /out/muster/" + img.Name + " " + img.Package,
				// The base layer's files, as baseLayer writes them.
				"printf '" + strings.ReplaceAll(Passwd, "\n", `\n`) + "' > /rootfs/etc/passwd",
				"printf '" + strings.ReplaceAll(Group, "\n", `\n`) + "' > /rootfs/etc/group",
				fmt.Sprintf("chown %d:%d /rootfs/home/nonroot && chmod 0700 /rootfs/home/nonroot", UID, GID),
				"chmod 1777 /rootfs/tmp",
			} {
				if !strings.Contains(b, want) {
					t.Errorf("the build stage lacks %q", want)
				}
			}
			kube := strings.Contains(b, "k8s.io/component-base/version")
			if kube != img.KubeLDFlags {
				t.Errorf("Kubernetes ldflags in the Dockerfile: %v, in the builder: %v", kube, img.KubeLDFlags)
			}
			if img.KubeLDFlags && !strings.Contains(b, "ARG KUBE_VERSION="+kubeVersion+"\n") {
				t.Errorf("the Dockerfile's KUBE_VERSION is not the Makefile's %s", kubeVersion)
			}
		})
	}
}

// dockerfile reads a Dockerfile's instructions ([keyword, rest]), with
// continuation lines joined and comments dropped.
func dockerfile(t *testing.T, file string) [][2]string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out [][2]string
	var cur strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if rest, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(rest + " ")
			continue
		}
		cur.WriteString(trimmed)
		kw, rest, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, [2]string{strings.ToUpper(kw), strings.Join(strings.Fields(rest), " ")})
		cur.Reset()
	}
	return out
}

func layerNames(t *testing.T, l v1.Layer) []string {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var names []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
}

// fakeELF is the smallest ELF executable header for machine that
// debug/elf reads, with a PT_INTERP asking for interp unless it is "".
func fakeELF(machine elf.Machine, interp string) []byte {
	h := elf.Header64{
		Ident:     [elf.EI_NIDENT]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)},
		Type:      uint16(elf.ET_EXEC),
		Machine:   uint16(machine),
		Version:   uint32(elf.EV_CURRENT),
		Ehsize:    64,
		Phentsize: 56,
		Shentsize: 64,
	}
	if interp != "" {
		h.Phoff, h.Phnum = 64, 1
	}
	var buf bytes.Buffer
	binary.Write(&buf, binary.LittleEndian, h)
	if interp != "" {
		n := uint64(len(interp) + 1)
		binary.Write(&buf, binary.LittleEndian, elf.Prog64{Type: uint32(elf.PT_INTERP), Flags: uint32(elf.PF_R), Off: 64 + 56, Filesz: n, Memsz: n, Align: 1})
		buf.WriteString(interp + "\x00")
	}
	return buf.Bytes()
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := ModuleRoot("go")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// makeVar is a `NAME := value` of the Makefile.
func makeVar(t *testing.T, root, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\s*:?=\s*(\S+)\s*$`).FindSubmatch(data)
	if m == nil {
		t.Fatalf("the Makefile sets no %s", name)
	}
	return string(m[1])
}

func names(built []Built) []string {
	var s []string
	for _, b := range built {
		s = append(s, b.Image.Name)
	}
	return s
}
