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

// Private mounts are the short-lived mounts imagefs makes for itself: to
// place a new image's balloon, to work on an unmounted image. They are
// detached mounts (fsopen, fsmount), in no mount namespace: a process that
// clones its mount namespace meanwhile (runc does, for every container it
// starts) copies every mount of the host's, and a copy of a private mount
// kept the image attached long after its unmount, until that container had
// pivoted into its root (seconds, when many start at once). A detached mount
// goes when its descriptor is closed, and with the process that holds it:
// a process killed while it holds one leaves nothing behind.
//
// snug before detached mounts mounted privately on directories made in the
// system's temporary directory, which a killed process left mounted;
// ReleaseStale and SweepPrivateDirs clean those up.

// MountDetached attaches the image at path and mounts it detached, as
// private mounts are: in no mount table and no container's copy of one, and
// gone, with its loop device, when Unmount closes it or the process dies.
// Place puts it on a directory later, so that a mount made ahead of need
// (the pool's) costs its user a move instead of an attach and a mount. It
// refuses an image attached already (ErrInUse); with o.New the caller
// vouches that nothing can hold the image, and it does not look.
func MountDetached(ctx context.Context, path string, o MountOptions) (*Mounted, error) {
	img, unlock, err := lockForMount(ctx, path)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if !o.New {
		if devs, err := FindLoops(img); err != nil {
			return nil, err
		} else if len(devs) > 0 {
			return nil, fmt.Errorf("mount %s: %w (%s)", path, ErrInUse, strings.Join(devs, ", "))
		}
	}
	loop, err := Attach(ctx, img, AttachOptions{ReadOnly: o.ReadOnly, DirectIO: o.DirectIO})
	if err != nil {
		return nil, err
	}
	defer loop.Close() // autoclear: the mount holds the device from here
	mnt, err := fsmountExt4(loop.Device, o)
	if err != nil {
		return nil, fmt.Errorf("mount %s (%s) privately: %w", path, loop.Device, err)
	}
	return &Mounted{Image: img, Device: loop.Device, Dir: fmt.Sprintf("/proc/self/fd/%d", mnt.Fd()), ReadOnly: o.ReadOnly, private: mnt}, nil
}

// Detached reports whether m is a detached mount that Place has not put on
// a directory yet.
func (m *Mounted) Detached() bool { return m.private != nil }

// Place mounts a detached mount on dir (move_mount), where it becomes an
// ordinary mount that outlives the process. image is where the image file
// is now: it may have been renamed since it was mounted (the loop device
// follows the file). On failure m stays detached, for Unmount.
func (m *Mounted) Place(image, dir string) error {
	if m.private == nil {
		return fmt.Errorf("mount %s on %s: not a detached mount", m.Image, dir)
	}
	img, err := canonical(image)
	if err != nil {
		return fmt.Errorf("mount %s on %s: %w", image, dir, err)
	}
	if err := unix.MoveMount(int(m.private.Fd()), "", unix.AT_FDCWD, dir, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", img, m.Device, dir, err)
	}
	// Attached, the mount no longer goes with the descriptor.
	m.private.Close()
	m.private = nil
	m.Image, m.Dir = img, dir
	return nil
}

// fsmountExt4 makes a detached ext4 mount of device with snug's options and
// returns its descriptor.
func fsmountExt4(device string, o MountOptions) (*os.File, error) {
	fsfd, err := unix.Fsopen("ext4", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fsopen: %w", err)
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigSetString(fsfd, "source", device); err != nil {
		return nil, fmt.Errorf("fsconfig source: %w", err)
	}
	opts := strings.Split(o.mountData(), ",")
	attrs := unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV
	if o.ReadOnly {
		opts = append(opts, "ro")
		attrs |= unix.MOUNT_ATTR_RDONLY
	}
	for _, opt := range opts {
		key, value, hasValue := strings.Cut(opt, "=")
		if hasValue {
			err = unix.FsconfigSetString(fsfd, key, value)
		} else {
			err = unix.FsconfigSetFlag(fsfd, key)
		}
		if err != nil {
			return nil, fmt.Errorf("fsconfig %s: %w%s", opt, err, fsLog(fsfd))
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return nil, fmt.Errorf("ext4 on %s: %w%s", device, err, fsLog(fsfd))
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return nil, fmt.Errorf("fsmount %s: %w", device, err)
	}
	return os.NewFile(uintptr(mfd), "mount of "+device), nil
}

// fsLog returns the messages the kernel left in a filesystem context, as
// ": message; message", or "" when there are none.
func fsLog(fsfd int) string {
	var msgs []string
	buf := make([]byte, 1024)
	for range 8 {
		n, err := unix.Read(fsfd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(buf[:n])))
	}
	if len(msgs) == 0 {
		return ""
	}
	return ": " + strings.Join(msgs, "; ")
}

// privatePrefixes name the directories of the private mounts of earlier
// versions.
var privatePrefixes = []string{"snug-create-", "snug-mnt-"}

// isStalePrivate reports whether dir is a private mount directory of an
// earlier version: this one makes none.
func isStalePrivate(dir string) bool {
	if filepath.Dir(dir) != filepath.Clean(os.TempDir()) {
		return false
	}
	base := filepath.Base(dir)
	for _, p := range privatePrefixes {
		if strings.HasPrefix(base, p) {
			return true
		}
	}
	return false
}

// privateDirAge is how old an empty private mount directory must be to be
// garbage: a live process of an earlier version mounted on its directory
// the moment it made it.
const privateDirAge = time.Minute

// SweepPrivateDirs removes the empty private mount directories that
// processes of earlier versions killed between making one and mounting on it left in the
// system's temporary directory. A directory still mounted on is not empty
// to rmdir, and stays (ReleaseStale is for those).
func SweepPrivateDirs() {
	for _, p := range privatePrefixes {
		dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), p+"*"))
		for _, dir := range dirs {
			if fi, err := os.Lstat(dir); err == nil && fi.IsDir() && time.Since(fi.ModTime()) > privateDirAge {
				os.Remove(dir) // fails, harmlessly, unless empty and unmounted
			}
		}
	}
}

// ReleaseStale unmounts the image at path from a private mount a killed
// process of an earlier version left behind, detaches its loop device and removes the directory.
// It reports whether there was one; an image mounted anywhere else is left
// alone.
func ReleaseStale(ctx context.Context, path string) (bool, error) {
	t, err := ReadMountTable()
	if err != nil {
		return false, err
	}
	return t.ReleaseStale(ctx, path)
}

// ReleaseStale is ReleaseStale, looking the image up in the table.
func (t *MountTable) ReleaseStale(ctx context.Context, path string) (bool, error) {
	m, err := t.Find(path)
	if errors.Is(err, ErrNotMounted) || errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !isStalePrivate(m.Dir) {
		return false, nil
	}
	if err := m.Unmount(ctx); err != nil {
		return false, fmt.Errorf("release %s from %s: %w", path, m.Dir, err)
	}
	if err := os.Remove(m.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return true, fmt.Errorf("release %s: %w", path, err)
	}
	return true, nil
}
