package imagefs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/failpoint"
)

// Loop is a loop device attached to an image file.
type Loop struct {
	// Device is the device node, e.g. /dev/loop3.
	Device string
	// DirectIO reports whether the kernel accepted direct I/O to the file.
	DirectIO bool
	dev      *os.File
}

// AttachOptions says how an image is attached.
type AttachOptions struct {
	ReadOnly bool
	// DirectIO asks the loop driver to bypass the host page cache, so image
	// data is cached once (by the filesystem inside), not twice. The kernel
	// falls back to buffered I/O where the backing file cannot do it.
	DirectIO bool
}

// loopBlockSize matches ext4's block size: with direct I/O, the loop
// device's logical block size must be at least the backing device's.
const loopBlockSize = 4096

// Attach binds the image file to a free loop device with LOOP_CONFIGURE. The
// device is autoclear: it detaches itself when its last user goes, so a
// crashed caller leaks no device once its mount is gone. The caller holds one
// reference until Close; mount the device before closing it.
func Attach(ctx context.Context, path string, o AttachOptions) (*Loop, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	flag := os.O_RDWR
	if o.ReadOnly {
		flag = os.O_RDONLY
	}
	img, err := os.OpenFile(abs, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", path, err)
	}
	defer img.Close()

	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", path, err)
	}
	defer ctl.Close()

	cfg := unix.LoopConfig{Fd: uint32(img.Fd()), Size: loopBlockSize}
	cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
	if o.ReadOnly {
		cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
	}
	if o.DirectIO {
		cfg.Info.Flags |= unix.LO_FLAGS_DIRECT_IO
	}
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], abs)

	// Another process may take the free device between GET_FREE and
	// CONFIGURE; the loser sees EBUSY and asks again. A device GET_FREE
	// offers again after that is held by someone (an exclusive opener: a
	// prober, a claim not yet released), and stays busy for longer than
	// the retries wait (seen under make test's load): the next index is
	// tried instead, added if need be.
	busy := map[int]bool{}
	for attempt := 0; ; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if ferr := failpoint.Fault("loop-exhausted", unix.ENOSPC); ferr != nil {
			n, err = -1, ferr // what the kernel says when it can add no device
		}
		if err != nil {
			return nil, fmt.Errorf("attach %s: no free loop device (LOOP_CTL_GET_FREE): %w", path, err)
		}
		if busy[n] {
			for busy[n] {
				n++
			}
			// EEXIST: there is one; any other error shows at the open.
			_ = unix.IoctlSetInt(int(ctl.Fd()), unix.LOOP_CTL_ADD, n)
		}
		devPath := "/dev/loop" + strconv.Itoa(n)
		dev, err := openLoopNode(ctx, devPath, flag)
		if err != nil {
			return nil, fmt.Errorf("attach %s: %w", path, err)
		}
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if err == nil {
			l := &Loop{Device: devPath, dev: dev}
			if info, err := unix.IoctlLoopGetStatus64(int(dev.Fd())); err == nil {
				l.DirectIO = info.Flags&unix.LO_FLAGS_DIRECT_IO != 0
			}
			if !o.ReadOnly {
				if err := KeepFlushes(ctx, devPath); err != nil {
					dev.Close() // autoclear detaches it
					return nil, fmt.Errorf("attach %s to %s: %w", path, devPath, err)
				}
			}
			return l, nil
		}
		dev.Close()
		if !errors.Is(err, unix.EBUSY) || attempt >= 32 {
			return nil, fmt.Errorf("attach %s to %s: LOOP_CONFIGURE: %w", path, devPath, err)
		}
		busy[n] = true
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(attempt+1) * time.Millisecond):
		}
	}
}

// openLoopNode opens a loop device node, waiting briefly for devtmpfs to
// create a node that LOOP_CTL_GET_FREE has just added.
func openLoopNode(ctx context.Context, path string, flag int) (*os.File, error) {
	for i := 0; ; i++ {
		f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, 0)
		if err == nil || !errors.Is(err, os.ErrNotExist) || i >= 100 {
			return f, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Close drops the caller's reference. If nothing else (a mount) holds the
// device, autoclear detaches it.
func (l *Loop) Close() error { return l.dev.Close() }

// Detach clears a loop device (LOOP_CLR_FD). On a device still in use the
// kernel only marks it autoclear, and it goes when its last user does.
func Detach(device string) error {
	f, err := os.OpenFile(device, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("detach %s: %w", device, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: %w", device, err)
	}
	return nil
}

// FindLoops returns the loop devices whose backing file is the image at
// path, read from sysfs (/sys/block/loopN/loop/backing_file), so a
// restarted daemon finds the attachments it made before.
func FindLoops(path string) ([]string, error) {
	t, err := readLoops()
	if err != nil {
		return nil, err
	}
	return t.Loops(path)
}

// canonical returns the absolute path with symlinks resolved, as the loop
// driver records it.
func canonical(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// loopBacking is a loop device and the file behind it.
type loopBacking struct{ device, file string }

// backingFiles lists every attached loop device with its backing file, read
// from sysfs (a deleted file keeps its old path).
//
// One read of /proc/partitions, which lists the block devices that have a
// size (an attached loop device; not one with nothing attached), then one
// read per attached device. The kernel keeps every loop device it ever
// made (370 on this machine after the test suite, attached or not), and
// every Remove scans them: reading each one's backing_file took 2.8 ms a
// scan with none attached, the busiest code of `snug serve` during a burst
// of containers; this takes 0.10 ms (BenchmarkBackingFiles, 370 devices).
// A loop device attached to a file of less than a sector has no size and
// is not listed: snug attaches nothing that small (an image's superblock
// is checked first).
func backingFiles() ([]loopBacking, error) {
	names, err := sizedLoops()
	if err != nil {
		return nil, err
	}
	var out []loopBacking
	for _, name := range names {
		file, ok := backingFile(name)
		if !ok {
			continue // detached while we looked
		}
		out = append(out, loopBacking{device: "/dev/" + name, file: file})
	}
	return out, nil
}

// sizedLoops lists the loop devices /proc/partitions shows.
func sizedLoops() ([]string, error) {
	b, err := os.ReadFile("/proc/partitions")
	if err != nil {
		return nil, err
	}
	return parsePartitionLoops(string(b)), nil
}

// parsePartitionLoops returns the whole loop devices (loopN, not their
// partitions loopNpM) named in the text of /proc/partitions: a header,
// then "major minor #blocks name" per device.
func parsePartitionLoops(text string) []string {
	var names []string
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			continue
		}
		n, ok := strings.CutPrefix(f[3], "loop")
		if !ok || n == "" || strings.Trim(n, "0123456789") != "" {
			continue
		}
		names = append(names, f[3])
	}
	return names
}

// backingFile is the file the loop device name (loopN) is attached to, as
// sysfs shows it; false when nothing is attached.
func backingFile(name string) (string, bool) {
	b, err := os.ReadFile("/sys/block/" + name + "/loop/backing_file")
	if err != nil {
		return "", false
	}
	return strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)"), true
}
