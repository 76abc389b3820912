// Package images builds muster's container images, one per binary
// (coordinator, agent, scheduler), with no container engine and no base
// image from a registry: each binary is cross-compiled static
// (CGO_ENABLED=0, -trimpath) and put on an empty base with a layer of its
// own (/etc/passwd and /etc/group naming the non-root user 65532, its home,
// /tmp), then written as an OCI image layout whose index holds one image
// per platform. `make images` runs it through cmd/mkimage; the Dockerfiles
// beside this file build the same layout with docker or buildah, and
// images_test.go keeps the two, the chart's values and the webhook in step.
package images

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// What every image shares.
const (
	// DefaultRegistry is where the chart's values expect the images
	// (deploy/helm/muster/values.yaml): <registry>/muster-<name>.
	DefaultRegistry = "ghcr.io/muster-dev"
	// BinDir holds the binary: /muster/<name>. The webhook's init
	// container runs /muster/agent install (webhook.ImageAgentPath).
	BinDir = "/muster"
	// UID and GID of the user the images run as (distroless' nonroot);
	// the chart's pods run as the same (runAsUser, runAsGroup).
	UID = 65532
	GID = 65532
	// User is the config's User: numeric, so a kubelet with runAsNonRoot
	// can tell it is not root without reading /etc/passwd.
	User = "65532:65532"
	// Home is the user's home directory and the working directory.
	Home = "/home/nonroot"
	// PathEnv is the one variable the images set.
	PathEnv = "PATH=" + BinDir + ":/usr/local/bin:/usr/bin:/bin"
	// Source is the org.opencontainers.image.source label.
	Source = "https://github.com/muster-dev/muster"
	// ChartDir is the Helm chart whose values name the images.
	ChartDir = "deploy/helm/muster"
)

// Passwd and Group are /etc/passwd and /etc/group of every image.
const (
	Passwd = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	Group  = "root:x:0:\nnonroot:x:65532:\n"
)

// Image is one of muster's images.
type Image struct {
	// Name is the binary's name: the image is <registry>/muster-<Name>,
	// its binary /muster/<Name>, its layout <out>/<Name>.
	Name string
	// Package is what go build builds, relative to the module's root.
	Package string
	// Description is the org.opencontainers.image.description label.
	Description string
	// KubeLDFlags: the binary is linked with Options.KubeLDFlags too (the
	// Makefile's KUBE_LDFLAGS: kube-scheduler inside reports its release).
	KubeLDFlags bool
}

// Images are muster's images, in the order they are built.
var Images = []Image{
	{Name: "coordinator", Package: "./coordinator/cmd/coordinator",
		Description: "muster's coordinator: the rendezvous API (gRPC, etcd-backed) and the admission webhook"},
	{Name: "agent", Package: "./agent/cmd/agent",
		Description: "muster's agent; the webhook's init container copies /muster/agent into each injected pod"},
	{Name: "scheduler", Package: "./scheduler-plugin/cmd/scheduler", KubeLDFlags: true,
		Description: "kube-scheduler with muster's gang plugin"},
}

// Platforms are the platforms `make images` builds.
var Platforms = []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}

// Binary is the image's binary, its entrypoint: /muster/<name>.
func (i Image) Binary() string { return BinDir + "/" + i.Name }

// Repository is the image's repository in registry.
func (i Image) Repository(registry string) string { return registry + "/muster-" + i.Name }

// Labels are the image's OCI labels (also the index's annotations);
// commit "" leaves out the revision.
func (i Image) Labels(version, commit string) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.source":      Source,
		"org.opencontainers.image.title":       "muster-" + i.Name,
		"org.opencontainers.image.description": i.Description,
		"org.opencontainers.image.version":     version,
	}
	if commit != "" {
		l["org.opencontainers.image.revision"] = commit
	}
	return l
}

// Lookup finds an image by name.
func Lookup(name string) (Image, bool) {
	i := slices.IndexFunc(Images, func(img Image) bool { return img.Name == name })
	if i < 0 {
		return Image{}, false
	}
	return Images[i], true
}

// Options say what Build builds and where.
type Options struct {
	// ModuleDir is the module's root (go.mod); "" finds it from the
	// working directory (go env GOMOD).
	ModuleDir string
	// OutDir receives an OCI layout per image, OutDir/<name>, and the
	// binaries, OutDir/bin/<os>_<arch>/<name>.
	OutDir string
	// Registry: images are named <Registry>/muster-<name>; "" is
	// DefaultRegistry.
	Registry string
	// Tag of every image; "" is the chart's appVersion, as the chart's
	// values default it.
	Tag string
	// Version and Commit go into the labels (version, revision).
	Version, Commit string
	// LDFlags link every binary (the Makefile's VERSION_LDFLAGS);
	// KubeLDFlags the images that ask for them too (KUBE_LDFLAGS).
	LDFlags, KubeLDFlags string
	// Images to build; nil: Images.
	Images []Image
	// Platforms to build each image for; nil: Platforms.
	Platforms []v1.Platform
	// Created is every file's modification time and the config's created
	// time, so that the same tree builds the same digests
	// (SOURCE_DATE_EPOCH); zero: the Unix epoch.
	Created time.Time
	// Go is the go command; "": "go".
	Go string
	// Log receives a line per step; nil: none.
	Log io.Writer

	// compile, when set, runs instead of cmd (tests): it must write the
	// binary the command would have written.
	compile func(cmd *exec.Cmd, p v1.Platform, out string) error
}

// Built is one image that Build wrote.
type Built struct {
	Image Image
	// Ref is the name the image is pushed under: <registry>/muster-<name>:<tag>.
	Ref string
	// Layout is the OCI image layout's directory; its index.json names
	// the image's index with org.opencontainers.image.ref.name <tag>.
	Layout string
	// Digest is the image index's: one image per platform.
	Digest    v1.Hash
	Platforms []v1.Platform
}

// Build compiles each image's binary for each platform and writes each
// image's OCI layout.
func Build(ctx context.Context, o Options) ([]Built, error) {
	start := time.Now()
	if err := o.defaults(); err != nil {
		return nil, err
	}
	for _, p := range o.Platforms {
		if _, err := elfMachine(p); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, err
	}
	base, err := baseLayer(o.Created)
	if err != nil {
		return nil, fmt.Errorf("images: the base layer: %w", err)
	}
	var built []Built
	for _, img := range o.Images {
		b, err := o.build(ctx, img, base)
		if err != nil {
			return built, err
		}
		built = append(built, b)
	}
	o.logf("images: %d images, %s, in %s", len(built), platformList(o.Platforms), time.Since(start).Round(100*time.Millisecond))
	return built, nil
}

func (o *Options) defaults() error {
	if o.Go == "" {
		o.Go = "go"
	}
	if o.ModuleDir == "" {
		dir, err := ModuleRoot(o.Go)
		if err != nil {
			return err
		}
		o.ModuleDir = dir
	}
	if o.OutDir == "" {
		return fmt.Errorf("images: no output directory")
	}
	// go build runs in ModuleDir: -o must not depend on it.
	out, err := filepath.Abs(o.OutDir)
	if err != nil {
		return err
	}
	o.OutDir = out
	if o.Registry == "" {
		o.Registry = DefaultRegistry
	}
	if o.Tag == "" {
		tag, err := ChartAppVersion(o.ModuleDir)
		if err != nil {
			return err
		}
		o.Tag = tag
	}
	if o.Images == nil {
		o.Images = Images
	}
	if o.Platforms == nil {
		o.Platforms = Platforms
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	return nil
}

func (o *Options) logf(format string, args ...any) {
	fmt.Fprintf(o.Log, format+"\n", args...)
}

// build makes one image: a binary per platform, an image per binary, an
// index over them, written as a fresh layout.
func (o *Options) build(ctx context.Context, img Image, base v1.Layer) (Built, error) {
	b := Built{Image: img, Ref: img.Repository(o.Registry) + ":" + o.Tag, Platforms: o.Platforms}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range o.Platforms {
		bin, err := o.compileBinary(ctx, img, p)
		if err != nil {
			return b, err
		}
		im, err := o.platformImage(img, p, base, bin)
		if err != nil {
			return b, fmt.Errorf("images: %s %s: %w", img.Name, p, err)
		}
		pl := p
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: im, Descriptor: v1.Descriptor{Platform: &pl}})
	}
	idx = mutate.Annotations(idx, img.Labels(o.Version, o.Commit)).(v1.ImageIndex)
	digest, err := idx.Digest()
	if err != nil {
		return b, fmt.Errorf("images: %s: %w", img.Name, err)
	}
	b.Digest = digest
	b.Layout = filepath.Join(o.OutDir, img.Name)
	if err := writeLayout(b.Layout, idx, map[string]string{
		// What skopeo's oci:DIR:TAG and `crane push DIR` go by, and the
		// full name containerd (and docker load) import it under.
		"org.opencontainers.image.ref.name": o.Tag,
		"io.containerd.image.name":          b.Ref,
	}); err != nil {
		return b, fmt.Errorf("images: %s: writing %s: %w", img.Name, b.Layout, err)
	}
	o.logf("images: %s -> %s (index %s)", b.Ref, b.Layout, digest)
	return b, nil
}

// compileBinary cross-compiles img's binary for p and checks it is a
// static executable for p.
func (o *Options) compileBinary(ctx context.Context, img Image, p v1.Platform) (string, error) {
	out := filepath.Join(o.OutDir, "bin", p.OS+"_"+p.Architecture, img.Name)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	cmd := o.goBuild(ctx, img, p, out)
	o.logf("images: %s %s: go build %s", img.Name, p, img.Package)
	start := time.Now()
	var err error
	if o.compile != nil {
		err = o.compile(cmd, p, out)
	} else {
		cmd.Stdout, cmd.Stderr = o.Log, o.Log
		err = cmd.Run()
	}
	if err != nil {
		return "", fmt.Errorf("images: %s %s: go build %s (GOOS=%s GOARCH=%s CGO_ENABLED=0, in %s): %w",
			img.Name, p, img.Package, p.OS, p.Architecture, cmd.Dir, err)
	}
	if err := CheckStatic(out, p); err != nil {
		return "", fmt.Errorf("images: %s %s: %w", img.Name, p, err)
	}
	st, err := os.Stat(out)
	if err != nil {
		return "", err
	}
	o.logf("images: %s %s: static binary, %.1f MB, in %s", img.Name, p, float64(st.Size())/1e6, time.Since(start).Round(100*time.Millisecond))
	return out, nil
}

// goBuild is the command that builds img's binary for p into out: what
// the Dockerfiles run too.
func (o *Options) goBuild(ctx context.Context, img Image, p v1.Platform, out string) *exec.Cmd {
	ldflags := o.LDFlags
	if img.KubeLDFlags && o.KubeLDFlags != "" {
		ldflags = strings.TrimSpace(o.KubeLDFlags + " " + ldflags)
	}
	cmd := exec.CommandContext(ctx, o.Go, "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", out, img.Package)
	cmd.Dir = o.ModuleDir
	// The last value of a variable wins: these override the caller's.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture)
	return cmd
}

// platformImage is img for p: the base layer, the binary's layer, and the
// config.
func (o *Options) platformImage(img Image, p v1.Platform, base v1.Layer, bin string) (v1.Image, error) {
	binLayer, err := binaryLayer(bin, img.Binary(), o.Created)
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: o.Created}
	im := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	im, err = mutate.Append(im,
		mutate.Addendum{Layer: base, History: v1.History{Created: created,
			CreatedBy: "make images: /etc/passwd, /etc/group (nonroot 65532), " + Home + ", /tmp"}},
		mutate.Addendum{Layer: binLayer, History: v1.History{Created: created,
			CreatedBy: "make images: go build -trimpath " + img.Package + " -> " + img.Binary()}},
	)
	if err != nil {
		return nil, err
	}
	cf, err := im.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = created
	cf.Config = v1.Config{
		User:       User,
		Entrypoint: []string{img.Binary()},
		Env:        []string{PathEnv},
		WorkingDir: Home,
		Labels:     img.Labels(o.Version, o.Commit),
	}
	return mutate.ConfigFile(im, cf)
}

// writeLayout writes idx as the only entry of a new OCI layout at dir,
// replacing what was there once the whole layout is written.
func writeLayout(dir string, idx v1.ImageIndex, annotations map[string]string) error {
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(annotations)); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// ModuleRoot is the directory of the main module's go.mod.
func ModuleRoot(goCmd string) (string, error) {
	out, err := exec.Command(goCmd, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("images: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("images: not inside a Go module (run from muster's checkout)")
	}
	return filepath.Dir(gomod), nil
}

func platformList(ps []v1.Platform) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
