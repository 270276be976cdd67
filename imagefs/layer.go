package imagefs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// LayerDir is the directory inside a layer image that holds the layer's
// content. mkfs.ext4 always makes /lost+found, and e2fsck recreates it if it
// goes; keeping the content one level down keeps lost+found out of every
// container's root filesystem.
const LayerDir = "fs"

// Layer describes a read-only layer image made by CreateLayer.
type Layer struct {
	// Bytes is what the image file costs the host (allocated bytes).
	Bytes int64
	// Inodes is the number of files, directories and links in the layer.
	Inodes int64
}

// CreateLayer packs the directory tree at src into a compact read-only ext4
// image at path, with src's content under LayerDir: no journal, no reserved
// blocks, inode tables sized to the tree, data written from the front of
// the file by mkfs.ext4 -d. The image is sized from a walk of src with slack
// that costs nothing on the host (unused blocks and inode tables stay holes);
// if mkfs still runs out of room, the size is doubled and it tries again.
//
// src must not change while CreateLayer runs. The image is built under a
// temporary name and renamed into place only when complete.
func CreateLayer(ctx context.Context, path, src string) (Layer, error) {
	if _, err := os.Lstat(path); err == nil {
		return Layer{}, fmt.Errorf("create layer %s: %w", path, ErrExists)
	}
	need, err := measureTree(src)
	if err != nil {
		return Layer{}, fmt.Errorf("create layer %s: %w", path, err)
	}
	// mkfs -d copies the content of its directory into the image's root:
	// give it a directory that holds src, renamed to LayerDir.
	stage, err := stageLayer(src)
	if err != nil {
		return Layer{}, fmt.Errorf("create layer %s: %w", path, err)
	}
	defer stage.undo()

	uuid, err := newUUID()
	if err != nil {
		return Layer{}, err
	}
	tmp := path + "." + uuid[:8] + tempSuffix
	defer os.Remove(tmp)
	size := need.imageSize()
	for attempt := 0; ; attempt++ {
		err = mkfsLayer(ctx, tmp, stage.dir, size, need.inodes+16, uuid)
		if err == nil {
			break
		}
		os.Remove(tmp)
		if !errors.Is(err, errLayerTooSmall) || attempt >= 3 {
			return Layer{}, fmt.Errorf("create layer %s: %w", path, err)
		}
		size *= 2
	}
	if err := fsyncPath(tmp); err != nil {
		return Layer{}, fmt.Errorf("create layer %s: %w", path, HostError(err))
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return Layer{}, fmt.Errorf("create layer %s: %w", path, ErrExists)
		}
		return Layer{}, fmt.Errorf("create layer %s: %w", path, err)
	}
	if err := fsyncPath(filepath.Dir(path)); err != nil {
		return Layer{}, err
	}
	fp, err := Footprint(path)
	if err != nil {
		return Layer{}, err
	}
	return Layer{Bytes: fp, Inodes: need.inodes}, nil
}

// errLayerTooSmall is mkfs.ext4 -d running out of blocks or inodes.
var errLayerTooSmall = errors.New("layer image too small for its content")

// mkfsLayer formats path as a read-only layer of size bytes and copies dir
// into it. A layer is never written after this, so it needs no journal and
// no reserve; its UUID is random for the same reason as a thin image's.
func mkfsLayer(ctx context.Context, path, dir string, size, inodes int64, uuid string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return HostError(err)
	}
	terr := f.Truncate(size)
	cerr := f.Close()
	if terr != nil || cerr != nil {
		return HostError(errors.Join(terr, cerr))
	}
	run, err := runTool(ctx, "mkfs.ext4",
		"-F", "-q", "-t", "ext4", "-b", "4096", "-m", "0", "-I", "256",
		"-O", "^has_journal,^resize_inode",
		"-N", strconv.FormatInt(inodes, 10),
		"-E", "lazy_itable_init=1,nodiscard,root_owner=0:0",
		"-U", uuid, "-L", "snug-layer", "-d", dir, path)
	if err != nil {
		return err
	}
	if run.ExitCode != 0 {
		ferr := run.failure("mkfs.ext4")
		if errors.Is(ferr, ErrHostFull) {
			// mkfs says the same for a full image and a full host: tell them
			// apart by the host's free space.
			var sfs unix.Statfs_t
			if unix.Statfs(filepath.Dir(path), &sfs) == nil && int64(sfs.Bavail)*sfs.Bsize > size {
				return fmt.Errorf("%w: %w", errLayerTooSmall, ferr)
			}
		}
		return ferr
	}
	return nil
}

// treeSize is what a directory tree needs in an ext4 image.
type treeSize struct {
	bytes  int64 // data and directory blocks, rounded to 4 KiB
	inodes int64
}

// imageSize leaves room for ext4's own metadata (extent blocks, bitmaps,
// group descriptors, xattr blocks) and slack; unused space costs nothing.
func (t treeSize) imageSize() int64 {
	size := t.bytes + t.bytes/4 + t.inodes*(256+4096) + 16<<20
	return (size + loopBlockSize - 1) / loopBlockSize * loopBlockSize
}

// measureTree walks dir without following symlinks or crossing mounts.
func measureTree(dir string) (treeSize, error) {
	var t treeSize
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		t.inodes++
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			// Allocated blocks, so sparse files count what they hold.
			t.bytes += (st.Blocks*512 + loopBlockSize - 1) / loopBlockSize * loopBlockSize
		}
		if d.Type()&fs.ModeSymlink != 0 {
			t.bytes += loopBlockSize
		}
		return nil
	})
	return t, err
}

// layerStage is a directory whose only entry is src, renamed to LayerDir.
type layerStage struct {
	dir, src string
}

// stageLayer moves src into a fresh sibling directory as LayerDir, so that
// mkfs -d of that directory puts the content under LayerDir. A rename is
// atomic and free; undo moves it back. A crash in between leaves the stage;
// RestoreStaged undoes it.
func stageLayer(src string) (*layerStage, error) {
	dir := filepath.Join(filepath.Dir(src), stageName)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	if err := os.Rename(src, filepath.Join(dir, LayerDir)); err != nil {
		return nil, err
	}
	return &layerStage{dir: dir, src: src}, nil
}

// stageName is the staging directory CreateLayer makes next to its source.
const stageName = ".snug-layer-stage"

func (s *layerStage) undo() {
	if err := os.Rename(filepath.Join(s.dir, LayerDir), s.src); err == nil {
		os.Remove(s.dir)
	}
}

// RestoreStaged moves back a source directory that an interrupted
// CreateLayer left staged next to src. It does nothing if there is none.
func RestoreStaged(src string) error {
	dir := filepath.Join(filepath.Dir(src), stageName)
	staged := filepath.Join(dir, LayerDir)
	if _, err := os.Lstat(staged); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if _, err := os.Lstat(src); err == nil {
		return fmt.Errorf("restore %s: both it and %s exist", src, staged)
	}
	if err := os.Rename(staged, src); err != nil {
		return err
	}
	return os.Remove(dir)
}
