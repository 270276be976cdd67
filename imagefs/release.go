package imagefs

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// UnmountBelow unmounts every filesystem mounted at or below dir, deepest
// first, then detaches any loop device still backed by a file below dir (one
// attached by a process that died before it mounted). Unmounts are not lazy:
// if one stays busy, UnmountBelow returns an error wrapping ErrBusy and
// leaves the rest mounted, so the caller never deletes files from under a
// live filesystem. An unmount can succeed while the filesystem lives on (an
// overlay keeps private clones of its layers' mounts, so a container's
// rootfs holds the image without a visible mount): its loop device then
// stays attached, and UnmountBelow returns ErrBusy too.
func UnmountBelow(ctx context.Context, dir string) error {
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return err
	}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return err
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
	for _, mi := range mounts {
		if err := unmountRetry(ctx, mi.Mountpoint); err != nil {
			return err
		}
	}
	devs, err := loopsBelow(dir)
	if err != nil || len(devs) == 0 {
		return err // none attached: nothing to detach or wait for
	}
	var errs []error
	for _, dev := range devs {
		if err := Detach(dev); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return waitLoopsGone(ctx, dir, devs)
}

// detachWait bounds how long a device may take to go once its last user
// went (autoclear detaches it as the last unmount ends); one still
// attached after it has a user elsewhere.
const detachWait = 5 * time.Second

// waitGone polls gone until it says the loop devices it looks at are
// gone, for at most detachWait; a device still attached then has a user
// elsewhere, and waitGone returns ErrBusy.
func waitGone(ctx context.Context, gone func() (bool, error)) error {
	return waitGoneFor(ctx, detachWait, gone)
}

// waitGoneFor is waitGone for at most bound.
func waitGoneFor(ctx context.Context, bound time.Duration, gone func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	for {
		if ok, err := gone(); err != nil || ok {
			return err
		}
		if err := sleep(ctx, 5*time.Millisecond); err != nil {
			return fmt.Errorf("%w: %w", ErrBusy, err)
		}
	}
}

// waitLoopsGone waits until none of devs, the loop devices found backed by
// a file below dir, still is. It reads those devices' backing files only:
// a scan of every loop device each 5 ms, with a hundred containers on the
// host, was most of what a Remove cost the daemon.
func waitLoopsGone(ctx context.Context, dir string, devs []string) error {
	err := waitGone(ctx, func() (bool, error) {
		devs = slices.DeleteFunc(devs, func(dev string) bool { return !backedBelow(dev, dir) })
		return len(devs) == 0, nil
	})
	if errors.Is(err, ErrBusy) {
		return fmt.Errorf("%s: %v still attached, the filesystem is in use outside the mount table (a container's overlay?): %w", dir, devs, err)
	}
	return err
}

// unmountRetry unmounts dir, retrying a short while when it is busy.
func unmountRetry(ctx context.Context, dir string) error {
	for attempt := 0; ; attempt++ {
		err := unix.Unmount(dir, 0)
		if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
		if attempt >= 20 {
			return fmt.Errorf("unmount %s: %w: %w", dir, ErrBusy, err)
		}
		if err := sleep(ctx, 25*time.Millisecond); err != nil {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
}

// backedBelow reports whether the loop device dev is attached to a file
// below dir: false once it is detached, or attached to another file.
func backedBelow(dev, dir string) bool {
	file, ok := backingFile(filepath.Base(dev))
	return ok && strings.HasPrefix(file, dir+"/")
}

// loopsBelow lists the loop devices whose backing file lies below dir.
func loopsBelow(dir string) ([]string, error) {
	backing, err := backingFiles()
	if err != nil {
		return nil, err
	}
	var devs []string
	for _, b := range backing {
		if strings.HasPrefix(b.file, dir+"/") {
			devs = append(devs, b.device)
		}
	}
	return devs, nil
}
