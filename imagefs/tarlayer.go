package imagefs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"
	"golang.org/x/sys/unix"
)

// LayerFromTar writes the layer in the OCI layer tar r (uncompressed)
// straight into a compact read-only ext4 image at path, in one pass: the
// layer is written once, by a writer in this process (hcsshim's tar2ext4),
// not unpacked through a mounted filesystem and converted at commit. The
// content goes under LayerDir, as in every snug layer; OCI whiteouts become
// overlay whiteouts (a 0/0 character device, and the trusted.overlay.opaque
// xattr for an opaque directory), as containerd's overlay applier makes
// them; modes, owners, times, xattrs (PAX SCHILY.xattr), hard links,
// symlinks, devices and fifos are kept.
//
// The image gets a UUID of its own (the error monitor tells filesystems
// apart by it), is written under a temporary name, synced and renamed into
// place, so a crash leaves either nothing at path or the whole layer. It
// is written with direct I/O where the host's file system offers it
// (directWriter), around the page cache. It returns the layer's usage
// (LayerUsage).
func LayerFromTar(ctx context.Context, r io.Reader, path string, opts ...LayerOption) (Layer, error) {
	o := layerOptions{direct: true}
	for _, opt := range opts {
		opt(&o)
	}
	if _, err := os.Lstat(path); err == nil {
		return Layer{}, fmt.Errorf("layer from tar %s: %w", path, ErrExists)
	}
	uuid, err := newUUID()
	if err != nil {
		return Layer{}, err
	}
	tmp := path + "." + uuid[:8] + tempSuffix
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return Layer{}, fmt.Errorf("layer from tar %s: %w", path, HostError(err))
	}
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	lt := newLayerTar(ctx, r)
	sw := &sparseWriter{f: f}
	if o.direct {
		sw.direct = newDirectWriter(f, tmp)
	}
	defer sw.stop() // before the file is closed
	err = tar2ext4.ConvertTarToExt4(bufio.NewReaderSize(lt, 1<<20), sw, tar2ext4.ConvertWhiteout, tar2ext4.MaximumDiskSize(MaxLayerSize))
	if err == nil {
		err = sw.finish()
	}
	if err != nil {
		return Layer{}, fmt.Errorf("layer from tar %s: %w", path, HostError(err))
	}
	if err := padInodeBitmaps(f); err != nil {
		return Layer{}, fmt.Errorf("layer from tar %s: %w", path, HostError(err))
	}
	if err := writeUUID(f, uuid); err != nil {
		return Layer{}, fmt.Errorf("layer from tar %s: %w", path, HostError(err))
	}
	if err := f.Close(); err != nil {
		return Layer{}, fmt.Errorf("layer from tar %s: %w", path, HostError(err))
	}
	done = true
	if err := publishImage(tmp, path); err != nil {
		os.Remove(tmp)
		return Layer{}, err
	}
	return LayerUsage(path)
}

// LayerOption changes how LayerFromTar writes a layer.
type LayerOption func(*layerOptions)

type layerOptions struct{ direct bool }

// ThroughPageCache writes the layer through the host's page cache, as
// where direct I/O is refused, instead of with direct I/O (the benchmarks
// compare the two).
func ThroughPageCache() LayerOption { return func(o *layerOptions) { o.direct = false } }

// MaxLayerSize bounds what one layer from a tar may hold; the writer
// reserves its group descriptors for it (a few KiB).
const MaxLayerSize = 256 << 30

// layerTar reads an OCI layer tar and yields the same tar with every entry
// moved under LayerDir (hard link targets with it).
// Names are cleaned as if rooted: an entry cannot leave the layer (nor
// could it leave the image). It re-encodes headers only; file data passes
// through from the reader to the caller's buffer.
type layerTar struct {
	ctx     context.Context
	tr      *tar.Reader
	pending bytes.Buffer // encoded headers, padding and the end of the archive
	inData  bool         // copying the current entry's data
	size    int64        // the current entry's size
	copied  int64        // its bytes copied so far
	eof     bool
	dirs    map[string]bool // directories written, by name in the image
	now     time.Time       // the time of directories the tar does not list
}

func newLayerTar(ctx context.Context, r io.Reader) *layerTar {
	return &layerTar{ctx: ctx, tr: tar.NewReader(r), dirs: map[string]bool{}, now: time.Now()}
}

func (l *layerTar) Read(p []byte) (int, error) {
	for {
		if l.pending.Len() > 0 {
			return l.pending.Read(p)
		}
		if l.eof {
			return 0, io.EOF
		}
		if l.inData {
			if err := l.ctx.Err(); err != nil { // a cancelled pull stops mid-file too
				return 0, err
			}
			n, err := l.tr.Read(p)
			l.copied += int64(n)
			if n > 0 {
				return n, nil
			}
			if !errors.Is(err, io.EOF) {
				return 0, fmt.Errorf("layer tar: %w", err)
			}
			if l.copied != l.size {
				return 0, fmt.Errorf("layer tar: entry of %d bytes holds %d: %w", l.size, l.copied, io.ErrUnexpectedEOF)
			}
			l.inData = false
			if pad := l.copied % blockSizeTar; pad != 0 {
				l.pending.Write(tarZeros[:blockSizeTar-pad])
			}
			continue
		}
		if err := l.next(); err != nil {
			return 0, err
		}
	}
}

// next encodes the next entry's header into pending, or the end of the
// archive.
func (l *layerTar) next() error {
	if err := l.ctx.Err(); err != nil {
		return err
	}
	hdr, err := l.tr.Next()
	if errors.Is(err, io.EOF) {
		l.eof = true
		l.pending.Write(tarZeros[:])
		return nil
	}
	if err != nil {
		return fmt.Errorf("layer tar: %w", err)
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	// No path the kernel could not take in one piece (containerd's applier
	// fails on it too); it also bounds the writer's recursion over deep
	// trees.
	if len(hdr.Name) > unix.PathMax || len(hdr.Linkname) > unix.PathMax {
		return fmt.Errorf("layer tar: a name of %d bytes: %w", max(len(hdr.Name), len(hdr.Linkname)), unix.ENAMETOOLONG)
	}
	hdr.Name = inLayer(hdr.Name)
	if hdr.Typeflag == tar.TypeLink {
		hdr.Linkname = inLayer(hdr.Linkname)
	}
	// Admin xattrs (trusted.*, overlayfs's own among them) are not taken
	// from a layer, as containerd's applier refuses them: only the
	// whiteout conversion sets one.
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, paxXattr+"trusted.") {
			delete(hdr.PAXRecords, k)
		}
	}
	for k := range hdr.Xattrs { //nolint:staticcheck
		if strings.HasPrefix(k, "trusted.") {
			delete(hdr.Xattrs, k) //nolint:staticcheck
		}
	}
	// A directory the tar does not list is made as containerd's applier
	// makes it: 0755, root's, now.
	if err := l.parents(hdr.Name); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		l.dirs[strings.TrimSuffix(hdr.Name, "/")] = true
	}
	if hdr.Typeflag == tar.TypeGNUSparse { // the reader expands its holes
		hdr.Typeflag = tar.TypeReg
	}
	// Only regular files carry data; a size on anything else is ignored,
	// as containerd's applier ignores it.
	if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeRegA {
		hdr.Size = 0
	}
	if hdr.Size > MaxLayerSize { // a sparse file's zeros would take hours to go through
		return fmt.Errorf("layer tar: %s: %d bytes, more than a layer image holds: %w", hdr.Name, hdr.Size, unix.EFBIG)
	}
	tw := tar.NewWriter(&l.pending) // writes the header blocks at once
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("layer tar: %s: %w", hdr.Name, err)
	}
	l.inData, l.size, l.copied = true, hdr.Size, 0
	return nil
}

// parents writes a directory entry for each parent of name not seen yet.
func (l *layerTar) parents(name string) error {
	dir := path.Dir(strings.TrimSuffix(name, "/"))
	var missing []string
	for ; dir != "." && dir != "/" && !l.dirs[dir]; dir = path.Dir(dir) {
		missing = append(missing, dir)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		l.dirs[missing[i]] = true
		hdr := &tar.Header{Typeflag: tar.TypeDir, Name: missing[i] + "/", Mode: 0o755, ModTime: l.now, AccessTime: l.now, ChangeTime: l.now, Format: tar.FormatPAX}
		if err := tar.NewWriter(&l.pending).WriteHeader(hdr); err != nil {
			return fmt.Errorf("layer tar: %s: %w", hdr.Name, err)
		}
	}
	return nil
}

// paxXattr prefixes an xattr's PAX record.
const paxXattr = "SCHILY.xattr."

// blockSizeTar is the tar format's record block.
const blockSizeTar = 512

// tarZeros is a tar's padding, and its end (two zero blocks).
var tarZeros [2 * blockSizeTar]byte

// inLayer maps a tar entry's name to its path in the image.
func inLayer(name string) string {
	p := path.Clean("/" + name)
	if p == "/" {
		return LayerDir + "/"
	}
	return LayerDir + p
}

// writeUUID sets the UUID in the primary superblock of an image that has
// no metadata checksums (nothing else records the UUID).
func writeUUID(f *os.File, uuid string) error {
	u, err := parseUUID(uuid)
	if err != nil {
		return err
	}
	_, err = unix.Pwrite(int(f.Fd()), u, superblockOffset+0x68)
	return err
}

// padInodeBitmaps sets the bits past each group's last inode in its inode
// bitmap block, as mke2fs does and e2fsck expects ("Padding at end of inode
// bitmap is not set"); tar2ext4 leaves them clear. The image is one tar2ext4
// wrote: 4 KiB blocks, 32-byte group descriptors in block 1.
func padInodeBitmaps(f *os.File) error {
	sb := make([]byte, superblockSize)
	if _, err := f.ReadAt(sb, superblockOffset); err != nil {
		return err
	}
	le := binary.LittleEndian
	blocks, perGroup, inodesPerGroup := le.Uint32(sb[0x4:]), le.Uint32(sb[0x20:]), le.Uint32(sb[0x28:])
	const blockSize, descSize = 4096, 32
	if le.Uint32(sb[0x18:]) != 2 || perGroup == 0 || inodesPerGroup == 0 || inodesPerGroup > blockSize*8 {
		return fmt.Errorf("%w: not a tar2ext4 layout", ErrNotImage)
	}
	if inodesPerGroup == blockSize*8 {
		return nil
	}
	groups := (blocks + perGroup - 1) / perGroup
	descs := make([]byte, groups*descSize)
	if _, err := f.ReadAt(descs, blockSize); err != nil {
		return err
	}
	bitmap := make([]byte, blockSize)
	for g := range groups {
		at := int64(le.Uint32(descs[g*descSize+4:])) * blockSize
		if _, err := f.ReadAt(bitmap, at); err != nil {
			return err
		}
		for bit := inodesPerGroup; bit < blockSize*8; bit++ {
			bitmap[bit/8] |= 1 << (bit % 8)
		}
		if _, err := f.WriteAt(bitmap, at); err != nil {
			return err
		}
	}
	return nil
}

// sparseWriter is the image file as tar2ext4 writes it, leaving holes where
// it writes whole zero blocks into a part of the file never written before
// (a hole reads as zeros): a layer's runs of zeros, and the writer's
// padding, cost the host nothing, as in an image the kernel writes.
type sparseWriter struct {
	f      *os.File
	direct *directWriter // nil: writes go through the page cache
	off    int64         // where the next Read or Write goes
	high   int64         // everything from here on was never written
	size   int64         // the file's size once finished
	// kicked: data before it was handed to writeback (startWriteback);
	// synced: data before it was asked to be synced, by syncer.
	kicked, synced int64
	syncer         *dataSyncer
}

func (w *sparseWriter) Read(p []byte) (int, error) {
	if w.direct != nil {
		if err := w.direct.sync(); err != nil {
			return 0, err
		}
	}
	n, err := w.f.ReadAt(p, w.off)
	w.off += int64(n)
	return n, err
}

func (w *sparseWriter) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += w.off
	case io.SeekEnd:
		offset += w.size
	default:
		return 0, fmt.Errorf("seek: whence %d", whence)
	}
	if offset < 0 {
		return 0, fmt.Errorf("seek to %d", offset)
	}
	w.off = offset
	return offset, nil
}

func (w *sparseWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		// The longest run from the start of p that is all written or all
		// left out, in whole blocks where it is left out.
		skip := w.skippable(p)
		n := 0
		for n < len(p) {
			m := min(len(p)-n, sparseBlock-int((w.off+int64(n))%sparseBlock))
			if w.skippableAt(w.off+int64(n), p[n:n+m]) != skip {
				break
			}
			n += m
		}
		if !skip {
			if err := w.write(p[:n]); err != nil {
				return written, err
			}
		}
		w.off += int64(n)
		w.high = max(w.high, w.off)
		w.size = max(w.size, w.off)
		written += n
		p = p[n:]
	}
	return written, nil
}

// write writes p at the current offset.
func (w *sparseWriter) write(p []byte) error {
	if w.direct != nil {
		return w.direct.put(p, w.off)
	}
	if _, err := w.f.WriteAt(p, w.off); err != nil {
		return err
	}
	w.startWriteback(w.off + int64(len(p)))
	return nil
}

func (w *sparseWriter) skippable(p []byte) bool {
	return w.skippableAt(w.off, p[:min(len(p), sparseBlock-int(w.off%sparseBlock))])
}

// skippableAt tells whether chunk, at offset off, within one block, can be
// left as a hole: a whole zero block in the never-written part.
func (w *sparseWriter) skippableAt(off int64, chunk []byte) bool {
	return off >= w.high && len(chunk) == sparseBlock && allZero(chunk)
}

// startWriteback starts writing the file's data up to end to the disk,
// without waiting, every writebackChunk bytes, and asks for a sync of it
// every syncChunk bytes: the sync at the end then waits for the last
// chunk, not for the whole layer.
func (w *sparseWriter) startWriteback(end int64) {
	if end-w.kicked < writebackChunk {
		return
	}
	// Advice only: an error leaves the work to the final fsync.
	_ = unix.SyncFileRange(int(w.f.Fd()), w.kicked, end-w.kicked, unix.SYNC_FILE_RANGE_WRITE)
	w.kicked = end
	if end-w.synced >= syncChunk {
		if w.syncer == nil {
			w.syncer = newDataSyncer(int(w.f.Fd()))
		}
		w.syncer.request()
		w.synced = end
	}
}

// writebackChunk is how much written data startWriteback lets pile up;
// syncChunk, how much it hands to writeback before it asks for a sync.
const (
	writebackChunk = 8 << 20
	syncChunk      = 64 << 20
)

// stop waits for the writes and syncs under way in the background
// (directWriter, dataSyncer); the file may be closed then.
func (w *sparseWriter) stop() error {
	var err error
	if w.direct != nil {
		err = w.direct.close()
		w.direct = nil
	}
	if w.syncer != nil {
		w.syncer.stop()
		w.syncer = nil
	}
	return err
}

// finish writes what is left and gives the file its size (trailing holes
// are not written).
func (w *sparseWriter) finish() error {
	if err := w.stop(); err != nil {
		return err
	}
	return w.f.Truncate(w.size)
}

// sparseBlock is the unit sparseWriter leaves out: the image's block.
const sparseBlock = 4096

var zeroBlock [sparseBlock]byte

func allZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }

// LayerUsage measures a layer image LayerFromTar wrote: what it costs the
// host, and the inodes of its files (those in use, less the reserved ones
// and lost+found; a file's hard links share one).
func LayerUsage(path string) (Layer, error) {
	sb, err := ReadSuperblock(path)
	if err != nil {
		return Layer{}, fmt.Errorf("layer %s: %w", path, err)
	}
	fp, err := Footprint(path)
	if err != nil {
		return Layer{}, err
	}
	const reserved = tarLayerFirstInode - 1 + 1 // inodes 1-10 and lost+found
	return Layer{Bytes: fp, Inodes: max(sb.Inodes-sb.FreeInodes-reserved, 0)}, nil
}

// tarLayerFirstInode is the first inode tar2ext4 gives a file.
const tarLayerFirstInode = 11
