package imagefs

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/roottest"
)

// ociEntry is one entry of a layer tar written by writeOCITar.
type ociEntry struct {
	hdr  tar.Header
	data io.Reader
}

// writeOCITar writes the entries as an OCI layer tar.
func writeOCITar(t testing.TB, w io.Writer, entries []ociEntry) {
	t.Helper()
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if e.data != nil {
			if _, err := io.Copy(tw, e.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// upperTreeTar is writeUpperTree's tree as an OCI layer tar: OCI
// whiteouts where the upper dir has overlay ones, and a user xattr.
func upperTreeTar(t testing.TB, data []byte) []ociEntry {
	dir := func(name string, mode int64) ociEntry {
		return ociEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
	}
	const sparseSize = 1 << 30
	return []ociEntry{
		dir("./", 0o755),
		dir("./opaque/", 0o750),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "./opaque/.wh..wh..opq"}},
		dir("./opaque/sub/", 0o750),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "./.wh.gone"}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "./data", Mode: 0o640, Uid: 1000, Gid: 1001, Size: int64(len(data)),
			PAXRecords: map[string]string{"SCHILY.xattr.user.note": "kept"}}, data: bytes.NewReader(data)},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "./opaque/sub/hardlink", Linkname: "./data"}},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "./opaque/link", Linkname: "../data", Mode: 0o777}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "./sparse", Mode: 0o644, Size: sparseSize},
			data: io.MultiReader(io.LimitReader(zeroReader{}, sparseSize-3), strings.NewReader("end"))},
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestLayerFromTarKeepsOverlayMetadata writes a layer from a tar holding
// everything a layer can hold and checks the mounted image shows what
// containerd's overlay applier makes of it: the same tree as
// TestCreateLayerKeepsOverlayMetadata's, whiteouts as overlay whiteouts,
// under LayerDir, and nothing else; the 1 GiB of zeros costs no host disk;
// the image is clean and has a UUID of its own.
func TestLayerFromTarKeepsOverlayMetadata(t *testing.T) {
	roottest.Require(t, "e2fsck")
	ctx := context.Background()
	dir := roottest.TempDir(t)
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	pr, pw := io.Pipe()
	go func() {
		defer pw.Close()
		writeOCITar(t, pw, upperTreeTar(t, data))
	}()
	img := filepath.Join(dir, "layer.img")
	layer, err := LayerFromTar(ctx, pr, img)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(upperTreeInodes - 1); layer.Inodes != want { // the hard link shares its inode
		t.Errorf("inodes = %d, want %d", layer.Inodes, want)
	}
	if measured, err := LayerUsage(img); err != nil || measured != layer {
		t.Errorf("LayerUsage = %+v %v, want %+v", measured, err, layer)
	}
	if fp := fileFootprint(t, img); layer.Bytes != fp || fp > 8<<20 {
		t.Errorf("layer footprint %d bytes (reported %d) for 3 MiB of data", fp, layer.Bytes)
	}
	requireClean(t, img)
	other := filepath.Join(dir, "other.img")
	var small bytes.Buffer
	writeOCITar(t, &small, []ociEntry{{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "x/", Mode: 0o755}}})
	if _, err := LayerFromTar(ctx, &small, other); err != nil {
		t.Fatal(err)
	}
	a, err := ReadSuperblock(img)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ReadSuperblock(other)
	if err != nil {
		t.Fatal(err)
	}
	if a.UUID == b.UUID || a.UUID == [16]byte{} {
		t.Errorf("layers share UUID %s and %s", a.UUIDString(), b.UUIDString())
	}
	root := mountLayer(t, img, filepath.Join(dir, "mnt"))
	checkLayerTree(t, root, data)
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(filepath.Join(root, "data"), "user.note", buf); err != nil || string(buf[:n]) != "kept" {
		t.Errorf("user xattr = %q %v", buf[:n], err)
	}
}

// patternReader yields bytes that are never a whole zero block: each
// 8-byte word is its own offset, plus one.
type patternReader struct{ off uint64 }

func (r *patternReader) Read(p []byte) (int, error) {
	for i := range p {
		word := r.off/8 + 1
		p[i] = byte(word >> (8 * (r.off % 8)))
		r.off++
	}
	return len(p), nil
}

// TestLayerFromTarDirectAndBuffered: a layer holding a file of
// more than two syncChunks is written with direct I/O (directWriter), so
// little of it stays in the host's page cache; written through the page
// cache instead (where direct I/O is refused), its data is synced in the
// background as it is written (dataSyncer). Either way the image holds the
// file exactly and checks clean, and cancelled in the middle of such a
// file, the writing stops and leaves nothing.
func TestLayerFromTarDirectAndBuffered(t *testing.T) {
	roottest.Require(t, "e2fsck")
	for _, direct := range []bool{true, false} {
		t.Run(map[bool]string{true: "direct", false: "page-cache"}[direct], func(t *testing.T) {
			var way []LayerOption
			if !direct {
				way = append(way, ThroughPageCache())
			}
			ctx := context.Background()
			dir := roottest.TempDir(t)
			size := int64(2*syncChunk + 12345)
			var hdr bytes.Buffer
			tw := tar.NewWriter(&hdr)
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: size}); err != nil {
				t.Fatal(err)
			}
			tw.Flush()
			want := sha256.New()
			io.Copy(want, io.LimitReader(&patternReader{}, size))
			tail := make([]byte, 1024+(blockSizeTar-size%blockSizeTar)%blockSizeTar) // padding and the end
			syncs, writes := dataSyncs.Load(), directWrites.Load()
			img := filepath.Join(dir, "layer.img")
			if _, err := LayerFromTar(ctx, io.MultiReader(&hdr, io.LimitReader(&patternReader{}, size), bytes.NewReader(tail)), img, way...); err != nil {
				t.Fatal(err)
			}
			syncs, writes = dataSyncs.Load()-syncs, directWrites.Load()-writes
			cached := cachedFraction(t, img)
			t.Logf("%d background syncs, %d direct writes; %.0f%% of the image in the page cache", syncs, writes, 100*cached)
			if direct && (writes < size/directChunk || cached > 0.1) {
				t.Errorf("direct: %d direct writes for %d MiB, %.0f%% of the image in the page cache", writes, size>>20, 100*cached)
			}
			if !direct && (syncs < 1 || writes != 0) {
				t.Errorf("page cache: %d syncs and %d direct writes while %d MiB were written", syncs, writes, size>>20)
			}
			requireClean(t, img)
			f, err := os.Open(filepath.Join(mountLayer(t, img, filepath.Join(dir, "mnt")), "big"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got := sha256.New()
			if n, err := io.Copy(got, f); err != nil || n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
				t.Errorf("big: %d bytes read (%v), want %d; same data: %v", n, err, size, bytes.Equal(got.Sum(nil), want.Sum(nil)))
			}

			cancelled := filepath.Join(roottest.TempDir(t), "layer.img")
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var hdr2 bytes.Buffer
			tw = tar.NewWriter(&hdr2)
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: 4 * syncChunk})
			tw.Flush()
			src := io.MultiReader(&hdr2, &cancelAfter{r: &patternReader{}, left: 2*syncChunk + 1, cancel: cancel})
			if _, err := LayerFromTar(cctx, src, cancelled, way...); !errors.Is(err, context.Canceled) {
				t.Errorf("err = %v, want the cancel", err)
			}
			assertOnly(t, filepath.Dir(cancelled))
		})
	}
}

// cachedFraction is the part of the file at path held in the page cache.
func cachedFraction(t *testing.T, path string) float64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		t.Fatalf("%s: %v, %d bytes", path, err, st.Size())
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	pages := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&pages[0]))); errno != 0 {
		t.Fatal(errno)
	}
	in := 0
	for _, p := range pages {
		in += int(p & 1)
	}
	return float64(in) / float64(len(pages))
}

// cancelAfter reads r, and calls cancel once left bytes were read.
type cancelAfter struct {
	r      io.Reader
	left   int64
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.left -= int64(n); c.left <= 0 {
		c.cancel()
	}
	return n, err
}

// TestLayerFromTarStaysInside writes entries whose names climb out of the
// layer: each lands inside it, cleaned as if rooted.
func TestLayerFromTarStaysInside(t *testing.T) {
	roottest.Require(t)
	dir := roottest.TempDir(t)
	var tarball bytes.Buffer
	file := func(name string) ociEntry {
		return ociEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: 1}, data: strings.NewReader("x")}
	}
	writeOCITar(t, &tarball, []ociEntry{file("../../up"), file("/abs"), file("a/../../b")})
	img := filepath.Join(dir, "layer.img")
	if _, err := LayerFromTar(context.Background(), &tarball, img); err != nil {
		t.Fatal(err)
	}
	root := mountLayer(t, img, filepath.Join(dir, "mnt"))
	for _, name := range []string{"up", "abs", "b"} {
		if _, err := os.Stat(filepath.Join(root, name)); err != nil {
			t.Error(err)
		}
	}
	entries, err := os.ReadDir(filepath.Dir(root))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != LayerDir && e.Name() != "lost+found" {
			t.Errorf("%s outside %s", e.Name(), LayerDir)
		}
	}
}

// TestLayerFromTarBadInput gives broken tars: each fails, and nothing is
// left at the path or beside it.
func TestLayerFromTarBadInput(t *testing.T) {
	var whole bytes.Buffer
	writeOCITar(t, &whole, []ociEntry{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644, Size: 4096},
		data: bytes.NewReader(make([]byte, 4096))}})
	var orphan bytes.Buffer
	writeOCITar(t, &orphan, []ociEntry{{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "l", Linkname: "missing"}}})
	var deep bytes.Buffer
	writeOCITar(t, &deep, []ociEntry{{hdr: tar.Header{Typeflag: tar.TypeDir, Name: strings.Repeat("d/", 3000), Mode: 0o755}}})
	for name, input := range map[string][]byte{
		"path too long":    deep.Bytes(),
		"truncated":        whole.Bytes()[:1024],
		"garbage":          bytes.Repeat([]byte("not a tar "), 200),
		"link to no file":  orphan.Bytes(),
		"header cut short": whole.Bytes()[:100],
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "layer.img")
			if _, err := LayerFromTar(context.Background(), bytes.NewReader(input), img); err == nil {
				t.Fatal("no error")
			}
			assertOnly(t, dir)
		})
	}
	t.Run("exists", func(t *testing.T) {
		dir := t.TempDir()
		img := filepath.Join(dir, "layer.img")
		if err := os.WriteFile(img, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LayerFromTar(context.Background(), bytes.NewReader(whole.Bytes()), img); err == nil {
			t.Fatal("no error")
		}
		if b, _ := os.ReadFile(img); string(b) != "keep" {
			t.Errorf("existing file changed: %q", b)
		}
	})
}

// FuzzLayerFromTar feeds arbitrary bytes as a layer tar (untrusted input:
// a registry's blob): no panic, and what is accepted is an image.
func FuzzLayerFromTar(f *testing.F) {
	var seed bytes.Buffer
	writeOCITar(f, &seed, []ociEntry{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "d/.wh.x"}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "d/f", Mode: 0o644, Size: 5}, data: strings.NewReader("hello")},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "d/l", Linkname: "d/f"}},
	})
	f.Add(seed.Bytes())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, input []byte) {
		img := filepath.Join(t.TempDir(), "layer.img")
		if _, err := LayerFromTar(context.Background(), bytes.NewReader(input), img); err != nil {
			return
		}
		if _, err := ReadSuperblock(img); err != nil {
			t.Fatalf("accepted input made no image: %v", err)
		}
	})
}

// TestLayerFromTarStopsWhenCancelled cancels the writing of a layer in the
// middle of a 200 GiB file of zeros: it stops at once and leaves nothing.
func TestLayerFromTarStopsWhenCancelled(t *testing.T) {
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "zeros", Mode: 0o644, Size: 100 << 30}); err != nil {
		t.Fatal(err)
	}
	tw.Flush()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := LayerFromTar(ctx, io.MultiReader(&hdr, zeroReader{}), filepath.Join(dir, "layer.img"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want the deadline", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("stopped %v after the start, the deadline was 200ms", took)
	}
	assertOnly(t, dir)
}

// TestLayerFromTarOnFullHostLeavesNothing writes a layer bigger than the
// host's free space, either way: the host's ENOSPC is reported as
// ErrHostFull and no file is left.
func TestLayerFromTarOnFullHostLeavesNothing(t *testing.T) {
	roottest.Require(t)
	for _, way := range [][]LayerOption{nil, {ThroughPageCache()}} {
		t.Run(map[bool]string{true: "direct", false: "page-cache"}[way == nil], func(t *testing.T) {
			dir := roottest.TempDir(t)
			if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
				t.Fatal(err)
			}
			const size = 4 << 20
			var tarball bytes.Buffer
			writeOCITar(t, &tarball, []ociEntry{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, Size: size},
				data: io.LimitReader(&patternReader{}, size)}})
			before := directWrites.Load()
			_, err := LayerFromTar(context.Background(), &tarball, filepath.Join(dir, "layer.img"), way...)
			t.Logf("%d direct writes", directWrites.Load()-before)
			if !errors.Is(err, ErrHostFull) {
				t.Fatalf("err = %v, want ErrHostFull", err)
			}
			assertOnly(t, dir)
		})
	}
}
