// Command mkimage builds muster's container images with no container
// engine: `make images` runs it. Each image is written as an OCI image
// layout, OUT/<name>/, whose index holds one image per platform and is
// named <registry>/muster-<name>:<tag>, as the chart's values name it.
//
//	go run ./deploy/images/cmd/mkimage -out .local/images -platforms linux/amd64
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/muster-dev/muster/deploy/images"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: mkimage [flags]\n\nBuilds muster's images (%s) as OCI layouts, with no container engine.\n\nFlags:\n", names(images.Images))
		fs.PrintDefaults()
	}
	var o images.Options
	var platforms, only, epoch string
	fs.StringVar(&o.OutDir, "out", ".local/images", "write OUT/<name>/ (an OCI layout per image) and OUT/bin/<os>_<arch>/<name>")
	fs.StringVar(&o.Registry, "registry", images.DefaultRegistry, "name the images <registry>/muster-<name>")
	fs.StringVar(&o.Tag, "tag", "", "the images' tag; empty: the chart's appVersion ("+images.ChartDir+"/Chart.yaml), as its values default it")
	fs.StringVar(&platforms, "platforms", "linux/amd64,linux/arm64", "comma-separated os/arch to build each image for")
	fs.StringVar(&only, "images", names(images.Images), "comma-separated images to build")
	fs.StringVar(&o.Version, "version", "dev", "the images' org.opencontainers.image.version label")
	fs.StringVar(&o.Commit, "commit", "", "the images' org.opencontainers.image.revision label")
	fs.StringVar(&o.LDFlags, "ldflags", "", "go build -ldflags for every binary (make: VERSION_LDFLAGS)")
	fs.StringVar(&o.KubeLDFlags, "kube-ldflags", "", "more -ldflags for the binaries with Kubernetes components inside, the scheduler (make: KUBE_LDFLAGS)")
	fs.StringVar(&epoch, "source-date-epoch", os.Getenv("SOURCE_DATE_EPOCH"), "seconds since 1970: the files' and the configs' time, for reproducible digests; empty: 0 [SOURCE_DATE_EPOCH]")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "mkimage: unexpected arguments %q\n", fs.Args())
		return 2
	}
	for _, s := range strings.Split(platforms, ",") {
		p, err := v1.ParsePlatform(strings.TrimSpace(s))
		if err != nil {
			fmt.Fprintf(os.Stderr, "mkimage: -platforms: %v\n", err)
			return 2
		}
		o.Platforms = append(o.Platforms, *p)
	}
	for _, n := range strings.Split(only, ",") {
		img, ok := images.Lookup(strings.TrimSpace(n))
		if !ok {
			fmt.Fprintf(os.Stderr, "mkimage: -images: no image %q (there are %s)\n", n, names(images.Images))
			return 2
		}
		o.Images = append(o.Images, img)
	}
	if epoch != "" {
		sec, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "mkimage: -source-date-epoch %q: not a number of seconds\n", epoch)
			return 2
		}
		o.Created = time.Unix(sec, 0).UTC()
	}
	o.Log = os.Stdout

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	built, err := images.Build(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		return 1
	}
	fmt.Println("\nPush them (the index, every platform) with crane or skopeo, e.g.:")
	for _, b := range built {
		fmt.Printf("  crane push %s %s\n", b.Layout, b.Ref)
	}
	if len(built) > 0 {
		b := built[0]
		tag := b.Ref[strings.LastIndex(b.Ref, ":")+1:]
		fmt.Printf("  skopeo copy --all oci:%s:%s docker://%s\n", b.Layout, tag, b.Ref)
	}
	return 0
}

func names(imgs []images.Image) string {
	s := make([]string, len(imgs))
	for i, img := range imgs {
		s[i] = img.Name
	}
	return strings.Join(s, ",")
}
