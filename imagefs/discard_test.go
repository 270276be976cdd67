package imagefs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDiscardDropsWhatItHolds: an image discarded with 16 MiB of files in
// its page cache, never synced, ends with nothing more written to its file
// than it had (ext4 starts writing dirty data itself once it is half the
// free space: the window here has 128 MiB); one an overlay still uses is not shut down (the overlay
// keeps working) and is reported busy.
func TestDiscardDropsWhatItHolds(t *testing.T) {
	ctx := context.Background()
	path, dir := newImage(t, 256*mib, 128*mib)
	m := mountImage(t, path, dir)
	unix.Sync() // the mkfs and the mount, not the files
	before := fileFootprint(t, path)
	writeFiles(t, filepath.Join(m.Dir, "upper"), 16, mib)
	if err := m.Discard(ctx); err != nil {
		t.Fatal(err)
	}
	if after := fileFootprint(t, path); after > before+2*mib {
		t.Errorf("footprint %d MiB after the discard, %d MiB before: the files were written", after/mib, before/mib)
	}
	if devs, _ := FindLoops(path); len(devs) != 0 {
		t.Errorf("still attached after the discard: %v", devs)
	}

	// Used by an overlay: not shut down.
	path2, dir2 := newImage(t, 128*mib, 64*mib)
	m2 := mountImage(t, path2, dir2)
	rootfs, _ := overlayOn(t, m2)
	if !m2.usedElsewhere() {
		t.Fatal("an image under a live overlay is not seen used")
	}
	cctx, cancel := context.WithTimeout(ctx, detachWait/4)
	defer cancel()
	m2.Discard(cctx) // busy: the overlay holds the filesystem
	if err := os.WriteFile(filepath.Join(rootfs, "still"), []byte("alive"), 0o644); err != nil {
		t.Errorf("the overlay stopped working after a discard of its image: %v", err)
	}
	if err := unix.Unmount(rootfs, 0); err != nil {
		t.Fatal(err)
	}
	if err := WaitDetached(ctx, m2.Image, m2.Device, detachWait); err != nil {
		t.Errorf("once the overlay went: %v", err)
	}
}

// TestWaitDetachedWatchesItsDevice: WaitDetached follows the one device it
// is given: attached to the image it waits (and says ErrStillAttached at
// its bound), detached it returns, and a device whose file was deleted, a new one made at its
// path, is not the image's.
func TestWaitDetachedWatchesItsDevice(t *testing.T) {
	path, _ := newImage(t, 128*mib, 64*mib)
	ctx := context.Background()
	loop, err := Attach(ctx, path, AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := WaitDetached(ctx, path, loop.Device, 50*time.Millisecond); !errors.Is(err, ErrStillAttached) {
		t.Errorf("attached: %v, want ErrStillAttached", err)
	}
	loop.Close() // autoclear: detached as its last user goes
	if err := WaitDetached(ctx, path, loop.Device, detachWait); err != nil {
		t.Errorf("detached: %v", err)
	}
	if loop, err = Attach(ctx, path, AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	defer loop.Close()
	// The image deleted and a new file made at its path: sysfs shows the
	// device's file by that path ("(deleted)"), but it is another inode.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("another file"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WaitDetached(ctx, path, loop.Device, time.Second); err != nil {
		t.Errorf("a new file at the image's path: %v, want nil at once", err)
	}
}
