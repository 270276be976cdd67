package imagefs

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// DirectIO reports whether the loop device of the mounted image bypasses
// the host's page cache.
func (m *Mounted) DirectIO() (bool, error) {
	dev, info, err := m.openLoop()
	if err != nil {
		return false, err
	}
	dev.Close()
	return info.Flags&unix.LO_FLAGS_DIRECT_IO != 0, nil
}

// SetDirectIO switches the loop device of the mounted image to direct I/O
// (on) or to the host's page cache (LOOP_SET_DIRECT_IO). The kernel drains
// the device's requests and fsyncs the image file before it switches, so it
// can be done under a running container: every write the container has
// fsync'd stays on the disk, and its later fsyncs still flush the image
// file (the device's flushes are checked after the switch, as at attach).
// It returns whether the device uses direct I/O afterwards (the kernel
// keeps a device buffered where the image file cannot take direct I/O,
// which is not an error) and whether it asked the kernel to switch: a
// device in the mode asked for already is left alone.
func (m *Mounted) SetDirectIO(ctx context.Context, on bool) (now, switched bool, err error) {
	if m.ReadOnly {
		return false, false, fmt.Errorf("direct I/O of %s: a read-only image keeps how it was attached", m.Image)
	}
	dev, info, err := m.openLoop()
	if err != nil {
		return false, false, err
	}
	defer dev.Close()
	if (info.Flags&unix.LO_FLAGS_DIRECT_IO != 0) == on {
		return on, false, nil
	}
	arg := 0
	if on {
		arg = 1
	}
	err = unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_SET_DIRECT_IO, arg)
	if err != nil && !(on && errors.Is(err, unix.EINVAL)) { // EINVAL: the file cannot take direct I/O
		return false, false, fmt.Errorf("direct I/O of %s on %s: LOOP_SET_DIRECT_IO: %w", m.Image, m.Device, err)
	}
	if info, err = unix.IoctlLoopGetStatus64(int(dev.Fd())); err != nil {
		return false, true, fmt.Errorf("direct I/O of %s on %s: LOOP_GET_STATUS64: %w", m.Image, m.Device, err)
	}
	if err := KeepFlushes(ctx, m.Device); err != nil {
		return false, true, fmt.Errorf("direct I/O of %s on %s: %w", m.Image, m.Device, err)
	}
	return info.Flags&unix.LO_FLAGS_DIRECT_IO != 0, true, nil
}

// openLoop opens the image's loop device and checks that it is still
// attached to the image file (by its inode): a device found by an earlier
// look may have been detached and attached to another image since. While
// the descriptor is open the device stays attached to what it shows.
func (m *Mounted) openLoop() (*os.File, *unix.LoopInfo64, error) {
	dev, err := os.OpenFile(m.Device, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("loop device of %s: %w", m.Image, err)
	}
	info, err := unix.IoctlLoopGetStatus64(int(dev.Fd()))
	if err != nil {
		dev.Close()
		return nil, nil, fmt.Errorf("loop device of %s: %s: LOOP_GET_STATUS64: %w", m.Image, m.Device, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(m.Image, &st); err != nil {
		dev.Close()
		return nil, nil, fmt.Errorf("loop device of %s: %w", m.Image, err)
	}
	if info.Inode != st.Ino || info.Device != st.Dev {
		dev.Close()
		return nil, nil, fmt.Errorf("loop device of %s: %s is attached to another file now: %w", m.Image, m.Device, ErrNotMounted)
	}
	return dev, info, nil
}
