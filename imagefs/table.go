package imagefs

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// MountTable is what the kernel shows of loop devices and their mounts, read
// once: every attached loop device with its backing file (sysfs), and every
// mount of a whole filesystem. Start-up looks up each of hundreds of images
// in one table, rather than reading sysfs and the mount table once per
// image. It is a picture: it does not see what changes after it was read.
type MountTable struct {
	loops  map[string][]string        // backing file → loop devices
	mounts map[uint64]*mountinfo.Info // device number → its first root mount
	points []string                   // every mount point
}

// ReadMountTable reads the loop devices and the mount table.
func ReadMountTable() (*MountTable, error) {
	t, err := readLoops()
	if err != nil {
		return nil, err
	}
	t.mounts = map[uint64]*mountinfo.Info{}
	infos, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, err
	}
	for _, mi := range infos {
		t.points = append(t.points, mi.Mountpoint)
		if mi.Root != "/" {
			continue
		}
		dev := unix.Mkdev(uint32(mi.Major), uint32(mi.Minor))
		if _, ok := t.mounts[dev]; !ok {
			t.mounts[dev] = mi
		}
	}
	return t, nil
}

// readLoops reads the loop devices alone: a table whose Find sees no mount.
func readLoops() (*MountTable, error) {
	backing, err := backingFiles()
	if err != nil {
		return nil, err
	}
	t := &MountTable{loops: map[string][]string{}}
	for _, b := range backing {
		t.loops[b.file] = append(t.loops[b.file], b.device)
	}
	return t, nil
}

// Loops returns the loop devices whose backing file is the image at path.
// A path can be reused by a new file (sysfs shows a deleted file by its old
// path): a device backed by another inode is not the image's.
func (t *MountTable) Loops(path string) ([]string, error) {
	target, err := canonical(path)
	if err != nil {
		return nil, err
	}
	return t.loopsOf(target)
}

// loopsOf is Loops for a path already canonical.
func (t *MountTable) loopsOf(target string) ([]string, error) {
	var want unix.Stat_t
	if err := unix.Stat(target, &want); err != nil {
		return nil, err
	}
	var devs []string
	for _, dev := range t.loops[target] {
		if backedBy(dev, want) {
			devs = append(devs, dev)
		}
	}
	return devs, nil
}

// backedBy reports whether the loop device's backing file, known to have
// the path of the file st describes, is that file: the same inode number
// (LOOP_GET_STATUS64). A device that cannot be asked is taken as the
// file's: better refuse a mount than mount an image twice.
func backedBy(dev string, st unix.Stat_t) bool {
	f, err := os.Open(dev)
	if err != nil {
		return !os.IsNotExist(err) // gone: detached while we looked
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		return !errors.Is(err, unix.ENXIO) // ENXIO: detached
	}
	return info.Inode == st.Ino
}

// Find returns where the image at path is mounted, or ErrNotMounted.
func (t *MountTable) Find(path string) (*Mounted, error) {
	img, err := canonical(path)
	if err != nil {
		return nil, err
	}
	devs, err := t.loopsOf(img)
	if err != nil {
		return nil, err
	}
	for _, dev := range devs {
		var st unix.Stat_t
		if err := unix.Stat(dev, &st); err != nil {
			continue
		}
		if mi, ok := t.mounts[st.Rdev]; ok {
			ro := strings.Contains(","+mi.Options+",", ",ro,")
			return &Mounted{Image: img, Device: dev, Dir: mi.Mountpoint, ReadOnly: ro}, nil
		}
	}
	return nil, fmt.Errorf("%s: %w", path, ErrNotMounted)
}

// Busy reports whether anything is mounted on dir or below it, or a loop
// device is backed by a file below it: what UnmountBelow would clear.
func (t *MountTable) Busy(dir string) bool {
	if d, err := canonical(dir); err == nil {
		dir = d
	}
	for _, p := range t.points {
		if p == dir || strings.HasPrefix(p, dir+"/") {
			return true
		}
	}
	for file := range t.loops {
		if strings.HasPrefix(file, dir+"/") {
			return true
		}
	}
	return false
}
