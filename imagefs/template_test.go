package imagefs

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snugfs/snug/internal/roottest"
)

// TestTemplatesMakeDistinctImages: images copied from a template are what
// Create makes (quota, window, a small footprint, clean, private), each
// with a UUID of its own in every superblock copy (ext4's fsid derives
// from it), and they mount side by side.
func TestTemplatesMakeDistinctImages(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck", "tune2fs", "dumpe2fs")
	ctx := context.Background()
	dir := roottest.TempDir(t)
	tpls, err := NewTemplates(ctx, filepath.Join(dir, "templates"))
	if err != nil {
		t.Fatal(err)
	}
	o := CreateOptions{Quota: 10 * gib, Window: 256 * mib, DirectIO: true}
	uuids := map[[16]byte]string{}
	var paths []string
	for _, name := range []string{"a", "b", "c"} {
		p := filepath.Join(dir, name)
		if err := tpls.Create(ctx, p, o); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
		if fp := fileFootprint(t, p); fp > 8*mib {
			t.Errorf("%s: a fresh 10GiB image costs %d bytes, want <= 8MiB", name, fp)
		}
		st, err := Stat(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if st.QuotaBytes != 10*gib || st.WindowBytes > 256*mib || st.WindowBytes < 200*mib || st.Health != "ok" {
			t.Errorf("%s: quota %d window %d health %s, want 10GiB, about 256MiB, ok", name, st.QuotaBytes, st.WindowBytes, st.Health)
		}
		requireClean(t, p)
		requirePrivate(t, p)
		sb, err := ReadSuperblock(p)
		if err != nil {
			t.Fatal(err)
		}
		if other, dup := uuids[sb.UUID]; dup {
			t.Fatalf("%s and %s share a UUID", name, other)
		}
		uuids[sb.UUID] = name
		// The backup superblock (a repair may start from it) has it too.
		run, err := runTool(ctx, "dumpe2fs", "-h", "-o", "superblock=32768", "-o", "blocksize=4096", p)
		if err != nil || run.ExitCode != 0 {
			t.Fatalf("dumpe2fs of the backup superblock: %v %+v", err, run)
		}
		if want := sb.UUIDString(); !containsLine(run.Stdout, "Filesystem UUID:", want) {
			t.Errorf("%s: the backup superblock does not carry the UUID %s:\n%s", name, want, run.Stdout)
		}
	}
	for _, p := range paths {
		m := mountImage(t, p, filepath.Join(filepath.Dir(p), filepath.Base(p)+".d"))
		if err := os.WriteFile(filepath.Join(m.Dir, "f"), []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := tpls.Create(ctx, paths[0], o); err == nil {
		t.Error("Create over an existing image succeeded")
	}
}

// containsLine reports whether text has a line starting with prefix whose
// rest, trimmed, is value.
func containsLine(text, prefix, value string) bool {
	for _, l := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(l, prefix); ok && strings.TrimSpace(rest) == value {
			return true
		}
	}
	return false
}

// TestTemplatesAreBounded: one template per set of options, the oldest
// deleted past maxTemplates; a template deleted from under it is made again.
func TestTemplatesAreBounded(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck", "tune2fs")
	ctx := context.Background()
	dir := roottest.TempDir(t)
	tpls, err := NewTemplates(ctx, filepath.Join(dir, "templates"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range maxTemplates + 2 {
		o := CreateOptions{Quota: MinQuota + int64(i)<<20}
		if err := tpls.Create(ctx, filepath.Join(dir, fmt.Sprint("img", i)), o); err != nil {
			t.Fatal(err)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "templates"))
	if len(entries) != maxTemplates {
		t.Fatalf("%d templates kept, want %d", len(entries), maxTemplates)
	}
	for _, e := range entries {
		os.Remove(filepath.Join(dir, "templates", e.Name()))
	}
	o := CreateOptions{Quota: MinQuota + int64(maxTemplates+1)<<20}
	if err := tpls.Create(ctx, filepath.Join(dir, "again"), o); err != nil {
		t.Fatalf("after its template was deleted: %v", err)
	}
	requireClean(t, filepath.Join(dir, "again"))
}

// TestCreateToAttachIsWrittenBackByAttach: CreateToAttach leaves the copy
// of the template in the host's page cache (no sync), and attaching it
// writes it back (LOOP_CONFIGURE syncs the backing file): the kernel
// behaviour the pool's premounted images rely on to be on the disk whole
// before anything mounts them. FIEMAP without its sync flag shows what is
// still only in the page cache as delayed-allocation extents.
func TestCreateToAttachIsWrittenBackByAttach(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	ctx := context.Background()
	dir := roottest.TempDir(t)
	tpls, err := NewTemplates(ctx, filepath.Join(dir, "templates"))
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "pooled.img")
	if err := tpls.CreateToAttach(ctx, img, CreateOptions{Quota: 10 * gib, Window: 256 * mib, DirectIO: true}); err != nil {
		t.Fatal(err)
	}
	if n := delallocExtents(t, img); n == 0 {
		t.Fatal("the fresh copy has no extent waiting in the page cache: it was synced (or written back already)")
	}
	l, err := Attach(ctx, img, AttachOptions{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if n := delallocExtents(t, img); n > 0 {
		t.Errorf("after the attach %d extents of the image wait in the page cache: attaching did not write it back", n)
	}
}

// delallocExtents counts the extents of the file at path whose blocks are
// not allocated yet (FIEMAP_EXTENT_DELALLOC): data only in the page cache.
// It asks FIEMAP without FIEMAP_FLAG_SYNC, which would write them back.
func delallocExtents(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const extentDelalloc = 0x4
	buf := make([]byte, fiemapHeaderSize+fiemapBatch*fiemapExtentSize)
	binary.LittleEndian.PutUint64(buf[8:], ^uint64(0))
	binary.LittleEndian.PutUint32(buf[24:], fiemapBatch)
	if err := ioctlBuf(f, ioctlFIEMAP, buf); err != nil {
		t.Fatal(err)
	}
	n := 0
	for i := range int(binary.LittleEndian.Uint32(buf[20:])) {
		if binary.LittleEndian.Uint32(buf[fiemapHeaderSize+i*fiemapExtentSize+40:])&extentDelalloc != 0 {
			n++
		}
	}
	return n
}
