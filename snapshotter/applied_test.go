package snapshotter

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/snugfs/snug/imagefs"
)

// TestAppliedLayerBecomesTheLayer walks a layer's extraction as
// containerd's unpacker and snug's differ make it: Prepare with the
// snapshot.ref label, LayerTarget for its mounts, the layer written there
// from a tar, Commit. The unpack has no rw image; the committed layer is
// that image (its usage too), the unpack's dirs are gone, and a child sees
// the layer's files. Snapshots that
// are not an extraction, or whose upper dir has files, are not taken.
func TestAppliedLayerBecomesTheLayer(t *testing.T) {
	sn, root := newTestSnapshotter(t)
	ctx := context.Background()
	ref := snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "layer-1"})

	plain, err := sn.Prepare(ctx, "plain", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sn.LayerTarget(ctx, plain); !errdefs.IsNotImplemented(err) {
		t.Errorf("a container's snapshot taken by the differ: %v", err)
	}
	if _, err := sn.LayerTarget(ctx, []mount.Mount{{Type: "bind", Source: filepath.Join(root, "elsewhere")}}); !errdefs.IsNotImplemented(err) {
		t.Errorf("foreign mounts taken by the differ: %v", err)
	}
	dirty, err := sn.Prepare(ctx, "extract-dirty", "", ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(upperOf(dirty), "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.LayerTarget(ctx, dirty); !errdefs.IsNotImplemented(err) {
		t.Errorf("a snapshot with files taken by the differ: %v", err)
	}

	mounts, err := sn.Prepare(ctx, "extract-1", "", ref)
	if err != nil {
		t.Fatal(err)
	}
	extractID, err := sn.SnapshotID(ctx, "extract-1")
	if err != nil {
		t.Fatal(err)
	}
	// A layer's unpack has no rw image: its dirs are on the host.
	if _, err := os.Lstat(filepath.Join(sn.snapshotDir(extractID), rwImage)); !os.IsNotExist(err) {
		t.Errorf("a layer's unpack has a rw image: %v", err)
	}
	if imagefs.IsMountPoint(sn.mountPath(extractID)) {
		t.Errorf("a layer's unpack has its mount point mounted")
	}
	target, err := sn.LayerTarget(ctx, mounts)
	if err != nil {
		t.Fatal(err)
	}
	written := writeOneFileLayer(t, target, "etc/hello", "hello\n")
	if _, err := sn.LayerTarget(ctx, mounts); !errdefs.IsNotImplemented(err) {
		t.Errorf("a second layer applied onto the snapshot: %v", err)
	}
	if err := sn.Commit(ctx, "layer-1", "extract-1"); err != nil {
		t.Fatal(err)
	}
	id, err := sn.SnapshotID(ctx, "layer-1")
	if err != nil {
		t.Fatal(err)
	}
	usage, err := sn.Usage(ctx, "layer-1")
	if err != nil {
		t.Fatal(err)
	}
	if usage.Size != written.Bytes || usage.Inodes != written.Inodes {
		t.Errorf("usage %+v, want %+v", usage, written)
	}
	requireTakenLayer(t, sn, id, "layer-1", "etc/hello", "hello\n")

	// The dirty extraction with a layer applied anyway (by hand) is not
	// committed: its files would be lost.
	if err := os.WriteFile(filepath.Join(filepath.Dir(filepath.Dir(upperOf(dirty))), applied), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "layer-dirty", "extract-dirty"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("commit of an applied layer over files: %v", err)
	}
}

// TestAppliedLayerOverAnOlderUnpack commits a layer's unpack as an older
// snug left it: prepared with a rw image (mounted, in service), the
// extraction marked, and the layer snug's differ wrote beside it. Commit
// takes that layer and drops the rw image unwritten; a view reads it.
func TestAppliedLayerOverAnOlderUnpack(t *testing.T) {
	sn, _ := newTestSnapshotter(t)
	ctx := context.Background()
	if _, err := sn.Prepare(ctx, "old-extract", ""); err != nil {
		t.Fatal(err)
	}
	id, err := sn.SnapshotID(ctx, "old-extract")
	if err != nil {
		t.Fatal(err)
	}
	dir := sn.snapshotDir(id)
	if _, err := os.Lstat(filepath.Join(dir, rwImage)); err != nil {
		t.Fatalf("no rw image to begin with: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, extraction), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	writeOneFileLayer(t, filepath.Join(dir, applied), "old", "old\n")
	if err := sn.Commit(ctx, "old-layer", "old-extract"); err != nil {
		t.Fatal(err)
	}
	requireTakenLayer(t, sn, id, "old-layer", "old", "old\n")
}

// writeOneFileLayer writes, as snug's differ does, a layer image at path
// from a tar holding one file, name, with content.
func writeOneFileLayer(t *testing.T, path, name, content string) imagefs.Layer {
	t.Helper()
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(content))})
	tw.Write([]byte(content))
	tw.Close()
	written, err := imagefs.LayerFromTar(context.Background(), &tarball, path)
	if err != nil {
		t.Fatal(err)
	}
	return written
}

// requireTakenLayer checks the committed snapshot name (id): its layer
// image is the one written from a tar, nothing the unpack used is left, and
// a view of it reads file as want.
func requireTakenLayer(t *testing.T, sn *Snapshotter, id, name, file, want string) {
	t.Helper()
	dir := sn.snapshotDir(id)
	for _, gone := range []string{rwImage, applied, unpackDir, unpackDir + ".gone"} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s still there after the commit: %v", gone, err)
		}
	}
	if sb, err := imagefs.ReadSuperblock(filepath.Join(dir, layerImage)); err != nil || sb.HasJournal {
		t.Errorf("the layer image is not the one written from the tar: %+v %v", sb, err)
	}
	view, err := sn.View(context.Background(), name+"-view", name)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(mountRootfs(t, view), file)); err != nil || string(b) != want {
		t.Errorf("%s through the view = %q %v", file, b, err)
	}
}

// TestUnpackByAnotherDifferIsPacked unpacks two layers the way containerd
// does without snug's differ: Prepare with the snapshot.ref label, then
// containerd's own file-system applier onto the mounts (an overlay, so
// whiteouts and an opaque directory are written as overlayfs's), then
// Commit. The unpack's dirs on the host are packed into the layer image at
// Commit and go; a view of the top layer shows the merged tree: the
// deleted file and the opaque directory's old content hidden, the new
// files there, owners and modes kept. Both ways containerd unpacks: one
// layer after the other on its parent, and side by side ("rebase": each
// prepared without a parent, given it at Commit).
func TestUnpackByAnotherDifferIsPacked(t *testing.T) {
	for _, rebase := range []bool{false, true} {
		t.Run(map[bool]string{false: "sequential", true: "rebase"}[rebase], func(t *testing.T) {
			testUnpackByAnotherDiffer(t, rebase)
		})
	}
}

func testUnpackByAnotherDiffer(t *testing.T, rebase bool) {
	sn, _ := newTestSnapshotter(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	store, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	applier := apply.NewFileSystemApplier(store)
	unpack := func(name, parent string, entries ...tar.Header) {
		t.Helper()
		var raw bytes.Buffer
		tw := tar.NewWriter(&raw)
		for _, h := range entries {
			if err := tw.WriteHeader(&h); err != nil {
				t.Fatal(err)
			}
			tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
		}
		tw.Close()
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(raw.Bytes()), Size: int64(raw.Len())}
		if err := content.WriteBlob(ctx, store, name, bytes.NewReader(raw.Bytes()), desc); err != nil {
			t.Fatal(err)
		}
		key := "extract-" + name
		prepareParent, commitOpts := parent, []snapshots.Opt(nil)
		if rebase {
			prepareParent, commitOpts = "", []snapshots.Opt{snapshots.WithParent(parent)}
		}
		mounts, err := sn.Prepare(ctx, key, prepareParent, snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: name}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := applier.Apply(ctx, desc, mounts); err != nil {
			t.Fatal(err)
		}
		if u, err := sn.Usage(ctx, key); err != nil || u.Inodes == 0 {
			t.Errorf("usage of %s before its commit: %+v %v", key, u, err)
		}
		if err := sn.Commit(ctx, name, key, commitOpts...); err != nil {
			t.Fatal(err)
		}
		id, err := sn.SnapshotID(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		for _, gone := range []string{rwImage, applied, unpackDir, unpackDir + ".gone"} {
			if _, err := os.Lstat(filepath.Join(sn.snapshotDir(id), gone)); !os.IsNotExist(err) {
				t.Errorf("%s: %s still there after the commit: %v", name, gone, err)
			}
		}
	}
	unpack("base", "",
		tar.Header{Typeflag: tar.TypeDir, Name: "data/", Mode: 0o755},
		tar.Header{Typeflag: tar.TypeReg, Name: "data/keep", Mode: 0o644, Size: 4},
		tar.Header{Typeflag: tar.TypeReg, Name: "data/gone", Mode: 0o644, Size: 4},
		tar.Header{Typeflag: tar.TypeDir, Name: "opaque/", Mode: 0o755},
		tar.Header{Typeflag: tar.TypeReg, Name: "opaque/old", Mode: 0o644, Size: 3})
	unpack("top", "base",
		tar.Header{Typeflag: tar.TypeReg, Name: "data/.wh.gone"},
		tar.Header{Typeflag: tar.TypeDir, Name: "opaque/", Mode: 0o755},
		tar.Header{Typeflag: tar.TypeReg, Name: "opaque/.wh..wh..opq"},
		tar.Header{Typeflag: tar.TypeReg, Name: "opaque/new", Mode: 0o600, Uid: 1234, Gid: 5678, Size: 5})

	view, err := sn.View(ctx, "view", "top")
	if err != nil {
		t.Fatal(err)
	}
	root := mountRootfs(t, view)
	for _, c := range []struct {
		path string
		want bool
	}{{"data/keep", true}, {"data/gone", false}, {"opaque/old", false}, {"opaque/new", true}} {
		_, err := os.Lstat(filepath.Join(root, c.path))
		if got := err == nil; got != c.want {
			t.Errorf("%s there: %v, want %v (%v)", c.path, got, c.want, err)
		}
	}
	fi, err := os.Lstat(filepath.Join(root, "opaque/new"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o600 || st.Uid != 1234 || st.Gid != 5678 || fi.Size() != 5 {
		t.Errorf("opaque/new: mode %v uid %d gid %d size %d", fi.Mode(), st.Uid, st.Gid, fi.Size())
	}
}
