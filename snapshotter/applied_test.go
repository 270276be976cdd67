package snapshotter

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/imagefs"
)

// TestAppliedLayerBecomesTheLayer walks a layer's extraction as
// containerd's unpacker and snug's differ make it: Prepare with the
// snapshot.ref label, LayerTarget for its mounts, the layer written there
// from a tar, Commit. The committed layer is that image (its usage too),
// the rw image is gone, and a child sees the layer's files. Snapshots that
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
	if err := os.WriteFile(filepath.Join(dirty[0].Source, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.LayerTarget(ctx, dirty); !errdefs.IsNotImplemented(err) {
		t.Errorf("a snapshot with files taken by the differ: %v", err)
	}

	mounts, err := sn.Prepare(ctx, "extract-1", "", ref)
	if err != nil {
		t.Fatal(err)
	}
	target, err := sn.LayerTarget(ctx, mounts)
	if err != nil {
		t.Fatal(err)
	}
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/hello", Mode: 0o644, Size: 6})
	tw.Write([]byte("hello\n"))
	tw.Close()
	written, err := imagefs.LayerFromTar(ctx, &tarball, target)
	if err != nil {
		t.Fatal(err)
	}
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
	dir := sn.snapshotDir(id)
	for _, gone := range []string{rwImage, applied} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s still there after the commit: %v", gone, err)
		}
	}
	if sb, err := imagefs.ReadSuperblock(filepath.Join(dir, layerImage)); err != nil || sb.HasJournal {
		t.Errorf("the layer image is not the one written from the tar: %+v %v", sb, err)
	}
	if usage.Size != written.Bytes || usage.Inodes != written.Inodes {
		t.Errorf("usage %+v, want %+v", usage, written)
	}
	child, err := sn.View(ctx, "view", "layer-1")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(mountRootfs(t, child), "etc/hello")); err != nil || string(b) != "hello\n" {
		t.Errorf("etc/hello through the view = %q %v", b, err)
	}

	// The dirty extraction with a layer applied anyway (by hand) is not
	// committed: its files would be lost.
	if err := os.WriteFile(filepath.Join(filepath.Dir(filepath.Dir(dirty[0].Source)), applied), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "layer-dirty", "extract-dirty"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("commit of an applied layer over files: %v", err)
	}
}
