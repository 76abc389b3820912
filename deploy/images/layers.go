package images

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// entry is one file or directory of a layer: root's unless it says
// otherwise.
type entry struct {
	name     string // without a leading /; a directory ends in /
	mode     int64
	uid, gid int
	content  string
}

// baseEntries are what every image has besides its binary, as
// distroless/static lays them out: the users, the user's home (its own),
// and /tmp (sticky, writable by all).
var baseEntries = []entry{
	{name: "etc/", mode: 0o755},
	{name: "etc/passwd", mode: 0o644, content: Passwd},
	{name: "etc/group", mode: 0o644, content: Group},
	{name: "home/", mode: 0o755},
	{name: strings.TrimPrefix(Home, "/") + "/", mode: 0o700, uid: UID, gid: GID},
	{name: "tmp/", mode: 0o1777},
}

func (e entry) header(mtime time.Time) *tar.Header {
	h := &tar.Header{Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.gid, ModTime: mtime, Format: tar.FormatPAX}
	if strings.HasSuffix(e.name, "/") {
		h.Typeflag = tar.TypeDir
	} else {
		h.Typeflag = tar.TypeReg
		h.Size = int64(len(e.content))
	}
	return h
}

// baseLayer is the layer of baseEntries, the same in every image (one
// blob in a registry).
func baseLayer(mtime time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range baseEntries {
		if err := tw.WriteHeader(e.header(mtime)); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, e.content); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// binaryLayer is the layer that puts the file bin at inImage (an absolute
// path one directory deep, /muster/agent): root's, mode 0755, so the
// non-root user runs it and cannot change it.
func binaryLayer(bin, inImage string, mtime time.Time) (v1.Layer, error) {
	dir, name := path.Split(strings.TrimPrefix(inImage, "/"))
	if dir == "" || strings.Count(dir, "/") != 1 || name == "" {
		return nil, fmt.Errorf("binary path %q: want /DIR/NAME", inImage)
	}
	opener := func() (io.ReadCloser, error) {
		f, err := os.Open(bin)
		if err != nil {
			return nil, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		pr, pw := io.Pipe()
		go func() {
			defer f.Close()
			tw := tar.NewWriter(pw)
			err := tw.WriteHeader(entry{name: dir, mode: 0o755}.header(mtime))
			if err == nil {
				h := entry{name: dir + name, mode: 0o755}.header(mtime)
				h.Size = st.Size()
				err = tw.WriteHeader(h)
			}
			if err == nil {
				var n int64
				n, err = io.Copy(tw, f)
				if err == nil && n != st.Size() {
					err = fmt.Errorf("%s changed while it was read", bin)
				}
			}
			if err == nil {
				err = tw.Close()
			}
			pw.CloseWithError(err)
		}()
		return pr, nil
	}
	// The compressed bytes are kept: computing the digest and writing the
	// blob would gzip the binary twice otherwise.
	return tarball.LayerFromOpener(opener, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
}
