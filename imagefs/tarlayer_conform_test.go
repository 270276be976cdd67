package imagefs

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/roottest"
)

// everyKindTar is a layer tar holding every kind of entry a layer can
// hold: directories with set-gid and sticky bits and owners, files with
// set-uid bits, owners, xattrs (user and trusted) and times, a hard link,
// a symlink, character and block devices, a fifo, an empty file, OCI
// whiteouts of a file and of a directory, and an opaque directory.
func everyKindTar(t *testing.T) []byte {
	mtime := time.Date(2020, 2, 29, 12, 34, 56, 0, time.UTC)
	e := func(typ byte, name string, mode int64, extra func(*tar.Header)) ociEntry {
		h := tar.Header{Typeflag: typ, Name: name, Mode: mode, ModTime: mtime, Uid: 0, Gid: 0, Format: tar.FormatPAX}
		if extra != nil {
			extra(&h)
		}
		return ociEntry{hdr: h}
	}
	content := []byte("#!/bin/sh\necho layer\n")
	bin := e(tar.TypeReg, "usr/bin/tool", 0o4755, func(h *tar.Header) {
		h.Size = int64(len(content))
		h.Uid, h.Gid = 1000, 1001
		h.PAXRecords = map[string]string{"SCHILY.xattr.user.origin": "layer", "SCHILY.xattr.trusted.note": "t"}
	})
	bin.data = bytes.NewReader(content)
	entries := []ociEntry{
		e(tar.TypeDir, "./", 0o755, nil),
		e(tar.TypeDir, "usr/", 0o755, nil),
		e(tar.TypeDir, "usr/bin/", 0o2775, func(h *tar.Header) { h.Gid = 50 }),
		bin,
		// As tar writers make it: the link's header repeats its file's mode
		// and owner (containerd's applier applies them to the inode).
		e(tar.TypeLink, "usr/bin/tool-link", 0o4755, func(h *tar.Header) { h.Linkname = "usr/bin/tool"; h.Uid, h.Gid = 1000, 1001 }),
		e(tar.TypeSymlink, "usr/bin/sh", 0o777, func(h *tar.Header) { h.Linkname = "/bin/busybox" }),
		e(tar.TypeReg, "usr/empty", 0o600, func(h *tar.Header) { h.Uid = 65534 }),
		e(tar.TypeDir, "tmp/", 0o1777, nil),
		e(tar.TypeDir, "dev/", 0o755, nil),
		e(tar.TypeChar, "dev/null", 0o666, func(h *tar.Header) { h.Devmajor, h.Devminor = 1, 3 }),
		e(tar.TypeBlock, "dev/sda", 0o660, func(h *tar.Header) { h.Devmajor, h.Devminor = 8, 0; h.Gid = 6 }),
		e(tar.TypeFifo, "dev/pipe", 0o620, nil),
		e(tar.TypeReg, "etc/.wh.removed", 0, nil),
		e(tar.TypeReg, ".wh.olddir", 0, nil),
		e(tar.TypeDir, "var/", 0o755, nil),
		e(tar.TypeDir, "var/cache/", 0o700, nil),
		e(tar.TypeReg, "var/cache/.wh..wh..opq", 0, nil),
		e(tar.TypeReg, "var/cache/fresh", 0o644, nil),
	}
	var b bytes.Buffer
	writeOCITar(t, &b, entries)
	return b.Bytes()
}

// TestLayerFromTarMatchesContainerdApply applies one layer tar holding
// every kind of entry twice: as containerd's overlay applier does for
// overlayfs (archive.Apply with overlay whiteouts, into a directory) and
// with LayerFromTar. The two trees must be the same: names, types, modes
// with their set-uid, set-gid and sticky bits, owners, device numbers,
// sizes, contents, symlink targets, hard links, xattrs (a trusted.* one in
// the tar is dropped by both) and modification times, those of parent
// directories the tar does not list included (made now by both).
func TestLayerFromTarMatchesContainerdApply(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	dir := roottest.TempDir(t)
	tarball := everyKindTar(t)
	start := time.Now()

	want := filepath.Join(dir, "overlay-upper")
	if err := os.Mkdir(want, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := archive.Apply(ctx, want, bytes.NewReader(tarball), archive.WithConvertWhiteout(archive.OverlayConvertWhiteout)); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "layer.img")
	if _, err := LayerFromTar(ctx, bytes.NewReader(tarball), img); err != nil {
		t.Fatal(err)
	}
	requireClean(t, img)
	got := mountLayer(t, img, filepath.Join(dir, "mnt"))

	a, b := describeTree(t, want, start), describeTree(t, got, start)
	if len(a) < 15 {
		t.Fatalf("containerd's applier made only %d entries:\n%s", len(a), strings.Join(a, "\n"))
	}
	if !slices.Equal(a, b) {
		t.Errorf("trees differ\ncontainerd's applier:\n%s\nLayerFromTar:\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
}

// describeTree is one line per entry below root: what an overlay shows of
// it, times but the access and change times; a time since since reads
// "now".
func describeTree(t *testing.T, root string, since time.Time) []string {
	t.Helper()
	inodes := map[uint64]string{} // first path of each inode, for hard links
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		line := fmt.Sprintf("%s mode=%o uid=%d gid=%d", rel, st.Mode, st.Uid, st.Gid)
		// Not compared: the time of the root (containerd's applier leaves
		// the directory's own; a container sees its upper dir's) and of
		// whiteouts (no container sees them).
		whiteout := st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
		switch {
		case rel == "." || whiteout:
		case st.Mtim.Sec >= since.Unix()-1: // made by the apply, not from the tar
			line += " mtime=now"
		default:
			line += fmt.Sprintf(" mtime=%d", st.Mtim.Sec)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" size=%d sha=%x", st.Size, sha256.Sum256(b))
			if first, ok := inodes[st.Ino]; ok {
				line += " link-of=" + first
			} else {
				inodes[st.Ino] = rel
			}
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			line += " -> " + target
		case unix.S_IFCHR, unix.S_IFBLK:
			line += fmt.Sprintf(" rdev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			line += xattrsOf(t, p)
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return lines
}

// xattrsOf lists a file's xattrs and their values, sorted.
func xattrsOf(t *testing.T, p string) string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Listxattr(p, buf)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name != "" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var out strings.Builder
	for _, name := range names {
		v := make([]byte, 4096)
		m, err := unix.Getxattr(p, name, v)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&out, " %s=%q", name, v[:m])
	}
	return out.String()
}
