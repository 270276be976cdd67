package imagefs

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/roottest"
)

// TestCreateLayerKeepsOverlayMetadata packs a tree holding everything an
// overlay upper directory can hold (whiteouts, opaque directories, hard
// links, symlinks, sparse files, ownership, modes, xattrs) and checks the
// mounted layer shows all of it, under LayerDir, and nothing else.
func TestCreateLayerKeepsOverlayMetadata(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	ctx := context.Background()
	dir := roottest.TempDir(t)
	src := filepath.Join(dir, "upper")
	data := writeUpperTree(t, src)

	img := filepath.Join(dir, "layer.img")
	layer, err := CreateLayer(ctx, img, src)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(src); err != nil {
		t.Fatalf("source not restored after packing: %v", err)
	}
	if layer.Inodes != upperTreeInodes {
		t.Errorf("inodes = %d, want %d", layer.Inodes, upperTreeInodes)
	}
	// The 1 GiB sparse file and 3 MiB of data must cost about 3 MiB.
	if layer.Bytes > 8<<20 {
		t.Errorf("layer footprint %d bytes for 3 MiB of data", layer.Bytes)
	}
	requireClean(t, img)
	requirePrivate(t, img)
	checkLayerTree(t, mountLayer(t, img, filepath.Join(dir, "mnt")), data)
}

// upperTreeInodes is what writeUpperTree makes: upper, opaque, sub, gone,
// data, hardlink, link, sparse.
const upperTreeInodes = 8

// writeUpperTree writes into src a tree holding everything an overlay
// upper directory can hold (whiteouts, opaque directories, hard links,
// symlinks, sparse files, ownership, modes, xattrs). It returns the
// content of its data file.
func writeUpperTree(t *testing.T, src string) []byte {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "opaque/sub"), 0o750))
	must(unix.Setxattr(filepath.Join(src, "opaque"), "trusted.overlay.opaque", []byte("y"), 0))
	must(unix.Mknod(filepath.Join(src, "gone"), unix.S_IFCHR|0o000, 0))
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	must(os.WriteFile(filepath.Join(src, "data"), data, 0o640))
	must(os.Chown(filepath.Join(src, "data"), 1000, 1001))
	must(os.Link(filepath.Join(src, "data"), filepath.Join(src, "opaque/sub/hardlink")))
	must(os.Symlink("../data", filepath.Join(src, "opaque/link")))
	sparse, err := os.Create(filepath.Join(src, "sparse"))
	must(err)
	must(sparse.Truncate(1 << 30))
	_, err = sparse.WriteAt([]byte("end"), 1<<30-3)
	must(err)
	must(sparse.Close())
	return data
}

// mountLayer mounts a layer image read-only on mnt until the test ends and
// returns its LayerDir.
func mountLayer(t *testing.T, img, mnt string) string {
	t.Helper()
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := Mount(context.Background(), img, mnt, MountOptions{ReadOnly: true, DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmount(context.Background()) })
	return filepath.Join(mnt, LayerDir)
}

// checkLayerTree checks that root shows writeUpperTree's tree, whole, and
// nothing else.
func checkLayerTree(t *testing.T, root string, data []byte) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	entries, err := os.ReadDir(root)
	must(err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := "[data gone opaque sparse]"; fmt.Sprint(names) != want {
		t.Errorf("layer root holds %v, want %s", names, want)
	}
	got, err := os.ReadFile(filepath.Join(root, "opaque/sub/hardlink"))
	must(err)
	if !bytes.Equal(got, data) {
		t.Error("hard-linked data differs")
	}
	var a, b unix.Stat_t
	must(unix.Stat(filepath.Join(root, "data"), &a))
	must(unix.Stat(filepath.Join(root, "opaque/sub/hardlink"), &b))
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hard link lost: inodes %d/%d nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	if a.Uid != 1000 || a.Gid != 1001 || a.Mode&0o777 != 0o640 {
		t.Errorf("data owner %d:%d mode %o", a.Uid, a.Gid, a.Mode&0o777)
	}
	var g unix.Stat_t
	must(unix.Lstat(filepath.Join(root, "gone"), &g))
	if g.Mode&unix.S_IFMT != unix.S_IFCHR || g.Rdev != 0 {
		t.Errorf("whiteout lost: mode %o rdev %d", g.Mode, g.Rdev)
	}
	buf := make([]byte, 8)
	n, err := unix.Getxattr(filepath.Join(root, "opaque"), "trusted.overlay.opaque", buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Errorf("opaque xattr lost: %q %v", buf[:n], err)
	}
	if l, err := os.Readlink(filepath.Join(root, "opaque/link")); err != nil || l != "../data" {
		t.Errorf("symlink = %q %v", l, err)
	}
	f, err := os.Open(filepath.Join(root, "sparse"))
	must(err)
	defer f.Close()
	tail := make([]byte, 3)
	_, err = f.ReadAt(tail, 1<<30-3)
	must(err)
	if string(tail) != "end" {
		t.Errorf("sparse tail = %q", tail)
	}
}

// TestRestoreStaged recovers a source directory left staged by a crash.
func TestRestoreStaged(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "upper")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := stageLayer(src); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(src); !os.IsNotExist(err) {
		t.Fatalf("source still in place while staged: %v", err)
	}
	if err := RestoreStaged(src); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(src, "f")); err != nil || string(b) != "x" {
		t.Fatalf("restored content %q %v", b, err)
	}
	if err := RestoreStaged(src); err != nil {
		t.Fatalf("second restore: %v", err)
	}
}
