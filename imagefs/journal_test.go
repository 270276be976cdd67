package imagefs

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestJournalExtents(t *testing.T) {
	iblock := func(magic, entries, depth uint16, extents ...[3]uint64) []byte {
		b := make([]byte, 60)
		le := binary.LittleEndian
		le.PutUint16(b, magic)
		le.PutUint16(b[2:], entries)
		le.PutUint16(b[4:], 4)
		le.PutUint16(b[6:], depth)
		for i, e := range extents {
			x := b[12+12*i:]
			le.PutUint32(x, uint32(e[0]))
			le.PutUint16(x[4:], uint16(e[2]))
			le.PutUint16(x[6:], uint16(e[1]>>32))
			le.PutUint32(x[8:], uint32(e[1]))
		}
		return b
	}
	const blocks = 1 << 23
	for _, tc := range []struct {
		name   string
		iblock []byte
		want   []treeExtent
	}{
		{"one extent", iblock(extentMagic, 1, 0, [3]uint64{0, 4227072, 1024}), []treeExtent{{0, 4227072, 1024}}},
		{"two extents", iblock(extentMagic, 2, 0, [3]uint64{0, 100, 512}, [3]uint64{512, 9000, 512}), []treeExtent{{0, 100, 512}, {512, 9000, 512}}},
		{"high start", iblock(extentMagic, 1, 0, [3]uint64{0, 1<<32 | 5, 8}), nil},
		{"unwritten", iblock(extentMagic, 1, 0, [3]uint64{0, 100, extentInitMax + 8}), []treeExtent{{0, 100, 8}}},
		{"index blocks", iblock(extentMagic, 1, 1, [3]uint64{0, 100, 8}), nil},
		{"no extents", iblock(extentMagic, 0, 0), nil},
		{"too many", iblock(extentMagic, 5, 0), nil},
		{"bad magic", iblock(0xF30B, 1, 0, [3]uint64{0, 100, 8}), nil},
		{"past the end", iblock(extentMagic, 1, 0, [3]uint64{0, blocks - 4, 8}), nil},
		{"at block 0", iblock(extentMagic, 1, 0, [3]uint64{0, 0, 8}), nil},
		{"empty", iblock(extentMagic, 1, 0, [3]uint64{0, 100, 0}), nil},
	} {
		got, ok := journalExtents(tc.iblock, blocks)
		if ok != (tc.want != nil) || !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v %v, want %v", tc.name, got, ok, tc.want)
		}
	}
}

// TestEmptyJournalLog: a new image keeps only its journal's superblock of
// the journal the balloon's placement wrote (its footprint a MiB smaller,
// e2fsck clean, the journal clean); it then works as any image, through
// more commits than its journal holds and a remount. A journal that is
// not clean (taken from a mounted image after fsyncs) is left untouched,
// and replays.
func TestEmptyJournalLog(t *testing.T) {
	ctx := context.Background()
	path, dir := newImage(t, 1*gib, 256*mib)
	jstart, jlen := journalPlace(t, path)
	if data := dataBlocks(t, path, jstart, jlen); !slices.Equal(data, []int64{jstart}) {
		t.Fatalf("journal blocks with data: %v, want only its superblock %d", data, jstart)
	}
	requireClean(t, path)

	// Past a lap of the journal: 4 MiB, 1024 blocks; each fsync commits.
	m := mountImage(t, path, dir)
	for i := range 600 {
		name := filepath.Join(m.Dir, fmt.Sprintf("f%d", i))
		f, err := os.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(bytes.Repeat([]byte{byte(i)}, 4096)); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	// A copy of the image as it is now: its journal holds those commits.
	live := filepath.Join(dir, "live.img")
	if err := copySparse(path, live); err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	requireClean(t, path)
	m = mountImage(t, path, dir)
	for _, i := range []int{0, 299, 599} {
		b, err := os.ReadFile(filepath.Join(m.Dir, fmt.Sprintf("f%d", i)))
		if err != nil || !bytes.Equal(b, bytes.Repeat([]byte{byte(i)}, 4096)) {
			t.Fatalf("f%d after a remount: %v", i, err)
		}
	}
	if err := m.Unmount(ctx); err != nil {
		t.Fatal(err)
	}

	sb, err := ReadSuperblock(live)
	if err != nil {
		t.Fatal(err)
	}
	if !sb.NeedsRecov {
		t.Fatal("the copy of the mounted image has a clean journal: the test needs one to replay")
	}
	before := dataBlocks(t, live, jstart, jlen)
	if err := withFile(live, emptyJournalLog); err != nil {
		t.Fatal(err)
	}
	if after := dataBlocks(t, live, jstart, jlen); !slices.Equal(after, before) {
		t.Fatalf("a journal to replay was punched: %d blocks with data before, %d after", len(before), len(after))
	}
	res, err := e2fsck(ctx, live, "repair", "-f", "-y")
	if err != nil || res.Uncorrected() {
		t.Fatalf("e2fsck -fy of the copy: %v\n%s", err, res.Output)
	}
	requireClean(t, live)
}

// journalPlace is where the image's journal lies, in blocks, as debugfs
// reads it from the journal inode (not from the superblock's backup that
// emptyJournalLog reads).
func journalPlace(t *testing.T, path string) (start, n int64) {
	t.Helper()
	run, err := runTool(context.Background(), "debugfs", "-R", "stat <8>", path)
	if err != nil || run.ExitCode != 0 {
		t.Fatalf("debugfs: %v %+v", err, run)
	}
	var first, last, pstart, pend int64
	i := bytes.Index([]byte(run.Stdout), []byte("EXTENTS:\n"))
	if i < 0 {
		t.Fatalf("debugfs: no extents:\n%s", run.Stdout)
	}
	if _, err := fmt.Sscanf(run.Stdout[i+len("EXTENTS:\n"):], "(%d-%d):%d-%d", &first, &last, &pstart, &pend); err != nil {
		t.Fatalf("debugfs: %v:\n%s", err, run.Stdout)
	}
	if first != 0 || pend-pstart != last-first {
		t.Fatalf("journal extent (%d-%d):%d-%d: want one extent from block 0", first, last, pstart, pend)
	}
	return pstart, pend - pstart + 1
}

// dataBlocks lists the blocks of [start, start+n) that hold data in the
// image file (SEEK_DATA), 4 KiB blocks.
func dataBlocks(t *testing.T, path string, start, n int64) []int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []int64
	for b := start; b < start+n; {
		d, err := unix.Seek(int(f.Fd()), b*4096, unix.SEEK_DATA)
		if err != nil || d >= (start+n)*4096 {
			break
		}
		h, err := unix.Seek(int(f.Fd()), d, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		for x := d / 4096; x < min(h/4096, start+n); x++ {
			out = append(out, x)
		}
		b = h / 4096
	}
	return out
}
