package imagefs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mounted is an image attached to a loop device and mounted.
type Mounted struct {
	// Image is the canonical path of the image file.
	Image string
	// Device is the loop device, e.g. /dev/loop3.
	Device string
	// Dir is where the filesystem is mounted. The container's data goes in
	// subdirectories; /.snug holds the balloon and must stay hidden from it.
	// A private mount's Dir is a /proc/self/fd path, valid in this process
	// only and until Unmount.
	Dir string
	// ReadOnly reports a read-only mount.
	ReadOnly bool
	// private holds a private mount (see MountDetached), which is in no
	// mount table; Dir then names it through this process's descriptor.
	private *os.File
}

// MountOptions says how an image is mounted.
type MountOptions struct {
	ReadOnly bool
	DirectIO bool // see AttachOptions.DirectIO
	// Discard turns on ext4's online discard: freed blocks become holes in
	// the image file after each journal commit, without waiting for Reclaim.
	Discard bool
	// AsyncCommit mounts with data=writeback,journal_async_commit (see
	// config.ImagePolicy.AsyncCommit).
	AsyncCommit bool
	// New says the image was made a moment ago by this process, at a path
	// nothing else knows yet (a pool image or a template's copy renamed
	// into a new snapshot): no loop device can hold it, so Mount and
	// MountDetached do not look for one. That look reads the backing file
	// of every attached loop device in sysfs; with a hundred containers on
	// the host, it was the daemon's largest cost in a burst of `ctr run`s.
	New bool
}

// flags returns the mount flags snug always uses.
func (o MountOptions) flags() uintptr {
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
	if o.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	return flags
}

// adopt mounts on dir the filesystem that an image's loop device carries
// already, when that filesystem lives on but not in the mount table: its
// mount was unmounted (by hand, or by a shutdown script) while a
// container's overlay kept a private clone of it. Mounting the device again
// gives the same ext4 instance, not a second one, so the snapshot is whole
// again and the container keeps running. A device that no filesystem holds
// (attached by hand, or by a process between its attach and its mount), or
// an image on two devices, is refused with ErrInUse.
func adopt(img string, devs []string, dir string, o MountOptions) (*Mounted, error) {
	if len(devs) != 1 || !heldByFilesystem(devs[0]) {
		return nil, fmt.Errorf("%w (%s)", ErrInUse, strings.Join(devs, ", "))
	}
	if err := unix.Mount(devs[0], dir, "ext4", o.flags(), o.mountData()); err != nil {
		return nil, fmt.Errorf("mount %s again on %s: %w", devs[0], dir, err)
	}
	return &Mounted{Image: img, Device: devs[0], Dir: dir, ReadOnly: o.ReadOnly}, nil
}

// heldByFilesystem reports whether a mounted filesystem holds the block
// device: it claims the device exclusively, so an O_EXCL open fails.
func heldByFilesystem(dev string) bool {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err == nil {
		f.Close()
		return false
	}
	return errors.Is(err, unix.EBUSY)
}

// mountData returns the ext4 mount options snug always uses.
//   - noinit_itable: never zero the lazily initialised inode tables in the
//     background; they are holes in the sparse file and stay so.
//   - errors=remount-ro: an error stops writes to the one faulty image (the
//     host keeps running) until snug checks and repairs it.
//   - discard, data=writeback,journal_async_commit: when the policy asks.
func (o MountOptions) mountData() string {
	opts := []string{"noinit_itable", "errors=remount-ro"}
	if o.ReadOnly {
		// Never replay a journal or write anything on a read-only mount.
		opts = []string{"noload", "errors=continue"}
	}
	if o.Discard && !o.ReadOnly {
		opts = append(opts, "discard")
	}
	if o.AsyncCommit && !o.ReadOnly {
		opts = append(opts, "data=writeback", "journal_async_commit")
	}
	return strings.Join(opts, ",")
}

// Mount attaches the image at path and mounts it on dir (which must exist).
// It checks the superblock first, so a file that is not ext4 is refused
// before the kernel sees it, and refuses an image attached already
// (ErrInUse): an image is mounted once. The one exception is an image whose
// filesystem lives on without a visible mount (see adopt). With o.New the
// caller vouches that nothing can hold the image, and Mount does not look.
func Mount(ctx context.Context, path, dir string, o MountOptions) (*Mounted, error) {
	img, unlock, err := lockForMount(ctx, path)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if !o.New {
		if m, err := adoptAttached(img, path, dir, o); err != nil || m != nil {
			return m, err
		}
	}
	loop, err := Attach(ctx, img, AttachOptions{ReadOnly: o.ReadOnly, DirectIO: o.DirectIO})
	if err != nil {
		return nil, err
	}
	// Autoclear: once the mount holds the device, our reference can go; if
	// the mount fails, closing it detaches the device.
	defer loop.Close()
	if err := unix.Mount(loop.Device, dir, "ext4", o.flags(), o.mountData()); err != nil {
		return nil, fmt.Errorf("mount %s (%s) on %s: %w", path, loop.Device, dir, err)
	}
	return &Mounted{Image: img, Device: loop.Device, Dir: dir, ReadOnly: o.ReadOnly}, nil
}

// adoptAttached looks for loop devices holding the image: one that is
// mounted is refused (ErrInUse), one whose filesystem lives on without a
// visible mount is adopted; nil, nil when none holds it. The loop devices
// alone (sysfs) tell whether the image is attached; the mount table, whose
// parsing grows with every mount, only matters when it is.
func adoptAttached(img, path, dir string, o MountOptions) (*Mounted, error) {
	loops, err := readLoops()
	if err != nil {
		return nil, err
	}
	devs, err := loops.Loops(img)
	if err != nil || len(devs) == 0 {
		return nil, err
	}
	t, err := ReadMountTable()
	if err != nil {
		return nil, err
	}
	if m, err := t.Find(img); err == nil {
		return nil, fmt.Errorf("mount %s: %w: mounted on %s", path, ErrInUse, m.Dir)
	}
	m, err := adopt(img, devs, dir, o)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", path, err)
	}
	return m, nil
}

// lockForMount checks that path holds a snug image (so a file that is not
// ext4 is refused before the kernel sees it) and takes the image's lock.
// Two loop devices on one file would give two ext4 instances writing the
// same blocks, so a mount refuses an image that is attached anywhere; the
// lock makes that check and the attach one step against other snug
// processes.
func lockForMount(ctx context.Context, path string) (img string, unlock func(), err error) {
	sb, err := ReadSuperblock(path)
	if err != nil {
		return "", nil, fmt.Errorf("mount %s: %w", path, err)
	}
	if sb.BlockSize != loopBlockSize {
		return "", nil, fmt.Errorf("mount %s: %w: block size %d, snug images use %d", path, ErrNotSnugImage, sb.BlockSize, loopBlockSize)
	}
	if img, err = canonical(path); err != nil {
		return "", nil, err
	}
	if unlock, err = lockImage(ctx, img); err != nil {
		return "", nil, fmt.Errorf("mount %s: %w", path, err)
	}
	// Mounted, the image is no longer as snug left it.
	if err := Unseal(img); err != nil {
		unlock()
		return "", nil, fmt.Errorf("mount %s: %w", path, err)
	}
	return img, unlock, nil
}

// Unmount unmounts the image; autoclear then detaches its loop device. It
// waits (until ctx ends, detachWait at most) for the device to go, so that
// an offline operation may follow at once; a device that stays has another
// user (the filesystem lives on in an overlay) and Unmount returns ErrBusy.
// Unmounting what is no longer mounted is not an error.
func (m *Mounted) Unmount(ctx context.Context) error {
	defer scrubbing.Delete(m.Image)
	if m.private != nil {
		// A private mount goes with its last reference.
		m.private.Close()
		m.private = nil
		return waitDetached(ctx, m.Image, m.Device)
	}
	for attempt := 0; ; attempt++ {
		err := unix.Unmount(m.Dir, 0)
		if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break
		}
		if !errors.Is(err, unix.EBUSY) || attempt >= 20 {
			return fmt.Errorf("unmount %s from %s: %w", m.Image, m.Dir, err)
		}
		if err := sleep(ctx, 25*time.Millisecond); err != nil {
			return fmt.Errorf("unmount %s from %s: %w", m.Image, m.Dir, err)
		}
	}
	return waitDetached(ctx, m.Image, m.Device)
}

// waitDetached waits until device no longer backs the image, for at most
// detachWait.
func waitDetached(ctx context.Context, image, device string) error {
	return WaitDetached(ctx, image, device, detachWait)
}

// WaitDetached waits, for at most bound, until device no longer backs the
// image: after an Unmount that returned ErrStillAttached, a caller that
// needs the image free (a repair) waits for the other user to let go.
//
// It reads that one device each time it looks, never every loop device:
// during a burst of containers one is attached per running container, per
// premounted pool image and per layer, and a scan of them all at each poll
// of each removal was a twentieth of the daemon's CPU (perf,
// bench/burst-cpu.sh PERF=1).
func WaitDetached(ctx context.Context, image, device string, bound time.Duration) error {
	target, err := canonical(image)
	var want unix.Stat_t
	if err == nil {
		err = unix.Stat(target, &want)
	}
	if err != nil {
		return nil // no image there any more: no device backs it
	}
	err = waitGoneFor(ctx, bound, func() (bool, error) {
		return !backs(device, target, want), nil
	})
	if errors.Is(err, ErrBusy) && ctx.Err() == nil {
		return fmt.Errorf("%s on %s: %w for %v, the filesystem is in use elsewhere", image, device, ErrStillAttached, bound)
	}
	return err
}

// FindMount returns where the image at path is mounted, found from the loop
// devices backing it and the mount table: a restarted process finds the
// mounts made before it. It returns ErrNotMounted when there is none.
func FindMount(path string) (*Mounted, error) {
	t, err := ReadMountTable()
	if err != nil {
		return nil, err
	}
	return t.Find(path)
}

// IsAttached reports whether any loop device backs the image.
func IsAttached(path string) (bool, error) {
	devs, err := FindLoops(path)
	return len(devs) > 0, err
}

// WithMount runs fn on the image mounted: where it is mounted already, there;
// otherwise on a private mount (see MountDetached) that is gone when
// WithMount returns.
func WithMount(ctx context.Context, path string, o MountOptions, fn func(*Mounted) error) (err error) {
	t, err := ReadMountTable()
	if err != nil {
		return err
	}
	if released, err := t.ReleaseStale(ctx, path); err != nil {
		return err
	} else if released {
		if t, err = ReadMountTable(); err != nil {
			return err
		}
	}
	if m, ferr := t.Find(path); ferr == nil {
		if m.ReadOnly && !o.ReadOnly {
			return fmt.Errorf("%s is mounted read-only on %s", path, m.Dir)
		}
		return fn(m)
	} else if !errors.Is(ferr, ErrNotMounted) {
		return ferr
	}
	if devs, lerr := t.Loops(path); lerr != nil {
		return lerr
	} else if len(devs) > 0 {
		return fmt.Errorf("%s: %w but not mounted", path, ErrInUse)
	}
	m, err := MountDetached(ctx, path, o)
	if err != nil {
		return err
	}
	defer func() {
		// Unmount even when ctx has ended: nothing may be left mounted.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if uerr := m.Unmount(uctx); uerr != nil && err == nil {
			err = uerr
		}
	}()
	return fn(m)
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// sysfsName is the name of the device under /sys/fs/ext4 ("loop3").
func (m *Mounted) sysfsName() string { return filepath.Base(m.Device) }
