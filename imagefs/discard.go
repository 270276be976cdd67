package imagefs

import (
	"context"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Discard unmounts an image whose content nobody wants any more (an rw
// image whose upper dir was packed into a layer), without writing it: ext4
// is shut down first (EXT4_IOC_SHUTDOWN, its journal not flushed), so the
// page cache's dirty data is dropped instead of written to the image file.
// For a layer just unpacked that is all of it: an unmount would write the
// whole layer to a file about to be deleted. The kernel logs the shutdown
// ("shut down requested").
//
// A filesystem used elsewhere (another mount of its device, an overlay on
// a directory of it) is not shut down, as its user's I/O would fail: it is
// unmounted as Unmount does, which reports it busy.
func (m *Mounted) Discard(ctx context.Context) error {
	if m.private == nil && !m.usedElsewhere() {
		if err := m.shutdown(); err != nil {
			return fmt.Errorf("discard %s: %w", m.Image, err)
		}
	}
	return m.Unmount(ctx)
}

// shutdown stops the mounted filesystem without writing anything more.
func (m *Mounted) shutdown() error {
	fd, err := unix.Open(m.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.IoctlSetPointerInt(fd, ioctlShutdown, shutdownNoLogFlush)
}

// usedElsewhere reports whether anything but its own mount uses the
// mounted filesystem: another mount of its device (a bind mount, a mount a
// restart adopted), or an overlay whose upper or lower directory is in it.
// A table that cannot be read counts as used.
func (m *Mounted) usedElsewhere() bool {
	tbl, err := ReadMountsBelow("/")
	if err != nil {
		return true
	}
	dir := m.Dir
	if d, err := canonical(dir); err == nil {
		dir = d
	}
	for _, e := range tbl.OnDevice(m.Device) {
		if e.Point != dir {
			return true
		}
	}
	inside := func(p string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	for _, ov := range tbl.Overlays() {
		if inside(ov.Upper) {
			return true
		}
		for _, l := range ov.Lowers {
			if inside(l) {
				return true
			}
		}
	}
	return false
}
