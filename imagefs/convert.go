package imagefs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/failpoint"
)

// LayerOf is what a layer held in the directory dir costs: the host bytes
// of the image file that holds it, once its filesystem is synced, and the
// files, directories and links in it. A commit records it as the layer's
// usage before the image becomes the layer (ConvertToLayer).
//
// The sync writes what the unpack left in the page cache to the image
// file. On a host without room for it, it fails with ErrHostFull before
// writing anything: a write-back the host cannot take fails in the image
// with EIO, and ext4 drops the pages it could not write.
func LayerOf(m *Mounted, dir string) (Layer, error) {
	t, err := measureTree(dir)
	if err != nil {
		return Layer{}, fmt.Errorf("layer of %s: %w", m.Image, err)
	}
	fp, err := Footprint(m.Image)
	if err != nil {
		return Layer{}, err
	}
	if err := hostRoomFor(m.Image, t.bytes-fp); err != nil {
		return Layer{}, fmt.Errorf("layer of %s: %w", m.Image, err)
	}
	if err := syncfs(m.Dir); err != nil {
		if room := hostRoomFor(m.Image, 0); room != nil {
			err = fmt.Errorf("%w: %w", room, err)
		}
		return Layer{}, fmt.Errorf("layer of %s: %w", m.Image, err)
	}
	if fp, err = Footprint(m.Image); err != nil {
		return Layer{}, err
	}
	return Layer{Bytes: fp, Inodes: t.inodes}, nil
}

// hostSlack is what the host must keep free beyond the bytes about to be
// written into an image: ext4's metadata and journal blocks, the host's own.
const hostSlack = 8 << 20

// hostRoomFor fails with ErrHostFull unless the host filesystem holding
// image has n bytes (and hostSlack) available.
func hostRoomFor(image string, n int64) error {
	sp, err := SpaceOf(filepath.Dir(image))
	if err != nil {
		return err
	}
	if avail := sp.AvailBytes; avail < max(n, 0)+hostSlack {
		return fmt.Errorf("%w: %d MiB available for %d MiB to write", ErrHostFull, avail>>20, max(n, 0)>>20)
	}
	return nil
}

// convertDetachWait bounds the wait for a thin image's filesystem to end
// after its unmount when a mount namespace copied elsewhere still holds it
// (a container being created): renaming the file while that filesystem
// lives on would let its last writes land in the layer.
const convertDetachWait = 30 * time.Second

// ConvertToLayer turns the mounted thin image m, whose directory upper
// holds a layer just unpacked (an overlay's upper dir, whiteouts and
// opaque directories as overlayfs writes them), into that layer's
// read-only image at dst, in place: upper becomes LayerDir, the overlay's
// work dir goes, the filesystem is synced and unmounted, and the image file
// is renamed to dst. The layer is written once, by the sync; packing it
// into a new image (CreateLayer) read it back and wrote it again, four
// times slower (bench/commit_test.go).
//
// Every step can run again after a crash: an upper dir renamed already is
// left as it is, and the file keeps its name until the filesystem is
// unmounted cleanly. It fails, changing nothing, when dst exists, and
// leaves the image under its name, unmounted, when the filesystem is still
// in use elsewhere after convertDetachWait.
func ConvertToLayer(ctx context.Context, m *Mounted, upper, work, dst string) error {
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("convert %s: %s: %w", m.Image, dst, ErrExists)
	}
	layerDir := filepath.Join(m.Dir, LayerDir)
	up := filepath.Join(m.Dir, upper)
	if _, err := os.Lstat(up); err == nil {
		if _, err := os.Lstat(layerDir); err == nil {
			return fmt.Errorf("convert %s: both %s and %s exist: %w", m.Image, upper, LayerDir, ErrExists)
		}
		if err := os.Rename(up, layerDir); err != nil {
			return fmt.Errorf("convert %s: %w", m.Image, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("convert %s: %w", m.Image, err)
	}
	if err := os.RemoveAll(filepath.Join(m.Dir, work)); err != nil {
		return fmt.Errorf("convert %s: %w", m.Image, err)
	}
	if err := syncfs(m.Dir); err != nil {
		return fmt.Errorf("convert %s: %w", m.Image, err)
	}
	failpoint.Inject("convert-renamed")
	err := m.Unmount(ctx)
	if errors.Is(err, ErrStillAttached) {
		err = WaitDetached(ctx, m.Image, m.Device, convertDetachWait)
	}
	if err != nil {
		return fmt.Errorf("convert %s: %w", m.Image, err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, m.Image, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("convert %s: %s: %w", m.Image, dst, ErrExists)
		}
		return fmt.Errorf("convert %s: %w", m.Image, err)
	}
	return fsyncPath(filepath.Dir(dst))
}

// syncfs writes everything of the filesystem mounted on dir to its image.
func syncfs(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}
