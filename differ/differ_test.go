package differ

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// targets answers LayerTarget with path, or errdefs.ErrNotImplemented for "".
type targets struct{ path string }

func (t targets) LayerTarget(context.Context, []mount.Mount) (string, error) {
	if t.path == "" {
		return "", errdefs.ErrNotImplemented
	}
	return t.path, nil
}

// layerBlob stores a gzipped layer tar holding /hello and a whiteout in a
// real content store, and returns its descriptor and the uncompressed
// tar's digest (the diff ID). more are further entries, each holding
// "hello\n".
func layerBlob(t *testing.T, ctx context.Context, store content.Store, more ...tar.Header) (ocispec.Descriptor, digest.Digest, int64) {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, h := range append([]tar.Header{
		{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: "etc/hello", Mode: 0o644, Size: 6},
		{Typeflag: tar.TypeReg, Name: "etc/.wh.gone"},
	}, more...) {
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("hello\n"))
		}
	}
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw.Bytes())
	zw.Close()
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(gz.Bytes()), Size: int64(gz.Len())}
	if err := content.WriteBlob(ctx, store, "layer", bytes.NewReader(gz.Bytes()), desc); err != nil {
		t.Fatal(err)
	}
	return desc, digest.FromBytes(raw.Bytes()), int64(raw.Len())
}

func newStore(t *testing.T) (context.Context, content.Store) {
	store, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return namespaces.WithNamespace(context.Background(), "test"), store
}

// TestApplyWritesTheLayerImage applies a gzipped layer where the
// snapshotter says: the image holds the layer, and the descriptor returned
// is the uncompressed tar's (the diff ID containerd checks).
func TestApplyWritesTheLayerImage(t *testing.T) {
	ctx, store := newStore(t)
	desc, diffID, size := layerBlob(t, ctx, store)
	target := filepath.Join(t.TempDir(), "applied.img")
	d := New(targets{target}, func() (content.Store, error) { return store, nil })
	got, err := d.Apply(ctx, desc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != diffID || got.Size != size || got.MediaType != ocispec.MediaTypeImageLayer {
		t.Errorf("applied %+v, want digest %s size %d", got, diffID, size)
	}
	if c := d.Counts(); c != (Counts{FromTar: 1}) {
		t.Errorf("counts %+v after one layer from its tar", c)
	}
	usage, err := imagefs.LayerUsage(target)
	if err != nil {
		t.Fatal(err)
	}
	if usage.Inodes != 4 { // fs, etc, hello, the whiteout
		t.Errorf("layer holds %d inodes, want 4", usage.Inodes)
	}
	// A media type no processor reads is refused, and nothing is written.
	other := filepath.Join(t.TempDir(), "applied.img")
	bad := desc
	bad.MediaType = "application/x-unknown"
	if _, err := New(targets{other}, func() (content.Store, error) { return store, nil }).Apply(ctx, bad, nil); err == nil {
		t.Error("unknown media type applied")
	}
	if _, err := os.Lstat(other); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused apply left %s: %v", other, err)
	}
}

// TestApplyFallsBackToTheMounts applies onto mounts the snapshotter does not
// take (not a layer's extraction): containerd's file-system applier
// unpacks into them, whiteouts and all.
func TestApplyFallsBackToTheMounts(t *testing.T) {
	roottest.Require(t)
	ctx, store := newStore(t)
	desc, diffID, _ := layerBlob(t, ctx, store)
	dir := roottest.TempDir(t)
	d := New(targets{}, func() (content.Store, error) { return store, nil })
	got, err := d.Apply(ctx, desc, []mount.Mount{{Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != diffID {
		t.Errorf("applied %s, want %s", got.Digest, diffID)
	}
	if c := d.Counts(); c != (Counts{ThroughMounts: 1}) {
		t.Errorf("counts %+v after one layer through the mounts", c)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "etc/hello")); err != nil || string(b) != "hello\n" {
		t.Errorf("etc/hello = %q %v", b, err)
	}
}

// TestApplyWithoutContainerd fails clearly when snug has no containerd to
// read layers from.
func TestApplyWithoutContainerd(t *testing.T) {
	want := errors.New("no containerd_address")
	d := New(targets{"x"}, func() (content.Store, error) { return nil, want })
	if _, err := d.Apply(context.Background(), ocispec.Descriptor{}, nil); !errors.Is(err, want) {
		t.Errorf("err = %v, want %v", err, want)
	}
}

// TestApplyFallsBackOnATarTheWriterRefuses applies a layer listing a file
// twice (the writer refuses to overwrite a file): nothing is left at the
// target, and containerd's applier unpacks it into the mounts, the last
// entry winning.
func TestApplyFallsBackOnATarTheWriterRefuses(t *testing.T) {
	roottest.Require(t)
	ctx, store := newStore(t)
	desc, diffID, _ := layerBlob(t, ctx, store, tar.Header{Typeflag: tar.TypeReg, Name: "etc/hello", Mode: 0o600, Size: 6})
	dir := roottest.TempDir(t)
	target := filepath.Join(t.TempDir(), "applied.img")
	d := New(targets{target}, func() (content.Store, error) { return store, nil })
	got, err := d.Apply(ctx, desc, []mount.Mount{{Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != diffID {
		t.Errorf("applied %s, want %s", got.Digest, diffID)
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused layer left %s: %v", target, err)
	}
	if c := d.Counts(); c != (Counts{Refused: 1}) {
		t.Errorf("counts %+v after one refused layer", c)
	}
	if fi, err := os.Stat(filepath.Join(dir, "etc/hello")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("etc/hello: %v %v, want the second entry's mode 0600", fi, err)
	}
}
