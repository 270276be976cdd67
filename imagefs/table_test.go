package imagefs

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMountTableLookups reads one image mounted, an overlay on its upper
// directory and a bind mount of it, and finds each by mount point, by
// device and by backing file, as the snapshotter and the error monitor ask.
func TestMountTableLookups(t *testing.T) {
	path, dir := newImage(t, 128*mib, 64*mib)
	m := mountImage(t, path, dir)
	rootfs, lower := overlayOn(t, m)
	bind := filepath.Join(dir, "bind")
	os.Mkdir(bind, 0o755)
	if err := unix.Mount(filepath.Join(m.Dir, "upper"), bind, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(bind, 0) })

	tbl, err := ReadMountTable()
	if err != nil {
		t.Fatal(err)
	}
	found, err := tbl.Find(path)
	if err != nil || found.Dir != m.Dir || found.Device != m.Device || found.ReadOnly {
		t.Errorf("Find: %+v, %v; want %+v", found, err, m)
	}
	if e, ok := tbl.At(m.Dir); !ok || e.FSType != "ext4" || e.Source != m.Device || e.Root != "/" {
		t.Errorf("At(%s) = %+v, %v", m.Dir, e, ok)
	}
	if e, ok := tbl.At(filepath.Join(m.Dir, "upper")); ok {
		t.Errorf("At a directory nothing is mounted on: %+v", e)
	}
	var ov *MountEntry
	for _, e := range tbl.Overlays() {
		if e.Point == rootfs {
			ov = &e
		}
	}
	if ov == nil || ov.Upper != m.Dir+"/upper" || !slices.Equal(ov.Lowers, []string{lower}) {
		t.Errorf("the overlay on %s: %+v", rootfs, ov)
	}
	var points []string
	for _, e := range tbl.OnDevice(m.Device) {
		points = append(points, e.Point+":"+e.Root)
	}
	if !slices.Equal(points, []string{m.Dir + ":/", bind + ":/upper"}) {
		t.Errorf("mounts on %s: %v, want the image's and the bind mount", m.Device, points)
	}
	if !IsMountPoint(m.Dir) || IsMountPoint(filepath.Join(m.Dir, "upper")) {
		t.Errorf("IsMountPoint: %s %v, its upper dir %v", m.Dir, IsMountPoint(m.Dir), IsMountPoint(filepath.Join(m.Dir, "upper")))
	}

	// A table of the mounts below dir: the image and the bind mount, not
	// the overlay elsewhere, and no loop device.
	below, err := ReadMountsBelow(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range below.entries {
		if !strings.HasPrefix(e.Point, dir+"/") {
			t.Errorf("ReadMountsBelow(%s) has %s", dir, e.Point)
		}
	}
	if _, ok := below.At(rootfs); ok {
		t.Errorf("ReadMountsBelow(%s) sees the overlay on %s", dir, rootfs)
	}
	at, ok := below.MountedAt(path, m.Dir)
	if !ok || at.Device != m.Device || at.Dir != m.Dir || at.Image != m.Image {
		t.Errorf("MountedAt: %+v, %v; want %+v", at, ok, m)
	}
	if _, err := below.Find(path); err == nil {
		t.Error("a table of mounts alone found an image by its loop device")
	}

	free, err := m.Free()
	sp, serr := SpaceOf(m.Dir)
	if err != nil || serr != nil || free <= 0 || free > 64*mib || sp.InodesUsed < 3 || sp.ReadOnly {
		t.Errorf("Free %d (%v), SpaceOf %+v (%v): want a window's free space, a few inodes", free, err, sp, serr)
	}
	if _, err := SpaceOf(filepath.Join(dir, "missing")); err == nil {
		t.Error("SpaceOf a missing directory: no error")
	}
}
