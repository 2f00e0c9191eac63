// ociimage writes a one-layer OCI image layout without a container daemon: the files given with
// --file, a config (entrypoint, user, labels) and nothing else (no shell, no package manager).
// go-containerregistry does the OCI parts (digests, media types, index.json); this file only
// decides what goes into the layer. Timestamps come from SOURCE_DATE_EPOCH (default 0), so the
// same inputs give the same digest.
//
//	ociimage --out DIR --file SRC=DST [--file ...] --entrypoint /path --user 65532:65532 \
//	  --label KEY=VALUE [--label ...] --ref-name 0.1.0
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var files, labels list
	out := flag.String("out", "", "OCI image layout directory to write (replaced)")
	entrypoint := flag.String("entrypoint", "", "absolute path of the entrypoint in the image")
	user := flag.String("user", "65532:65532", "uid:gid the container runs as")
	refName := flag.String("ref-name", "", "org.opencontainers.image.ref.name of the image in index.json")
	flag.Var(&files, "file", "SRC=DST: host file SRC at absolute path DST in the image (repeatable)")
	flag.Var(&labels, "label", "KEY=VALUE config label, also a manifest annotation (repeatable)")
	flag.Parse()
	if err := run(*out, *entrypoint, *user, *refName, files, labels); err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(1)
	}
}

func run(out, entrypoint, user, refName string, files, labels list) error {
	if out == "" || entrypoint == "" || len(files) == 0 {
		return fmt.Errorf("--out, --entrypoint and at least one --file are required")
	}
	epoch := int64(0)
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var err error
		if epoch, err = strconv.ParseInt(s, 10, 64); err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH=%q: expected seconds since 1970: %v", s, err)
		}
	}
	mtime := time.Unix(epoch, 0).UTC()
	layerTar, err := buildLayer(files, entrypoint, mtime)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return err
	}
	labelMap := map[string]string{}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return fmt.Errorf("--label %q: expected KEY=VALUE", l)
		}
		labelMap[k] = v
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	var dsts []string
	for _, f := range files {
		_, dst, _ := strings.Cut(f, "=")
		dsts = append(dsts, dst)
	}
	sort.Strings(dsts)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created:   v1.Time{Time: mtime},
		CreatedBy: "ociimage (e2e/tools): " + strings.Join(dsts, " "),
	}})
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture = "amd64"
	cf.OS = "linux"
	cf.Created = v1.Time{Time: mtime}
	cf.Config = v1.Config{
		Entrypoint: []string{entrypoint},
		User:       user,
		Labels:     labelMap,
		WorkingDir: "/",
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	img = mutate.Annotations(img, labelMap).(v1.Image)
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	p, err := layout.Write(out, empty.Index)
	if err != nil {
		return err
	}
	annotations := map[string]string{}
	if refName != "" {
		annotations["org.opencontainers.image.ref.name"] = refName
	}
	return p.AppendImage(img, layout.WithAnnotations(annotations),
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
}

// buildLayer returns a tar of the files (content of SRC, symlinks followed, owned by root) and
// every parent directory, in a stable order. The entrypoint must be one of them.
func buildLayer(files list, entrypoint string, mtime time.Time) ([]byte, error) {
	type entry struct{ src, dst string }
	var entries []entry
	dirs := map[string]bool{}
	seen := map[string]bool{}
	for _, f := range files {
		src, dst, ok := strings.Cut(f, "=")
		if !ok || !path.IsAbs(dst) || path.Clean(dst) != dst {
			return nil, fmt.Errorf("--file %q: expected SRC=DST with DST a clean absolute path", f)
		}
		if seen[dst] {
			return nil, fmt.Errorf("--file %q: %s given twice", f, dst)
		}
		seen[dst] = true
		entries = append(entries, entry{src, dst})
		for d := path.Dir(dst); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	if !seen[entrypoint] {
		return nil, fmt.Errorf("--entrypoint %s: not among the --file destinations", entrypoint)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].dst < entries[j].dst })
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range dirList {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/",
			Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	for _, e := range entries {
		data, err := os.ReadFile(e.src)
		if err != nil {
			return nil, err
		}
		st, err := os.Stat(e.src)
		if err != nil {
			return nil, err
		}
		// Executables stay executable; nothing is writable by the (non-root) user.
		mode := int64(0o644)
		if st.Mode()&0o111 != 0 {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(e.dst, "/"),
			Mode: mode, Size: int64(len(data)), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
