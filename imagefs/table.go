package imagefs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// MountTable is snug's one view of what the kernel shows of loop devices
// and mounts, read once: every attached loop device with its backing file
// (sysfs), and the mount table. Start-up looks up each of hundreds of
// images in one table, rather than reading sysfs and the mount table once
// per image. It is a picture: it does not see what changes after it was
// read. Nothing outside imagefs reads mountinfo or sysfs's loop devices.
type MountTable struct {
	loops   map[string][]string   // backing file → loop devices
	entries []MountEntry          // the mount table, in its order
	devices map[uint64][]int      // device number → its mounts, as indexes of entries
	tops    map[string]MountEntry // mount point → the top mount on it
}

// MountEntry is one mount of the mount table, as snug reads it.
type MountEntry struct {
	// Point is the mount point; Source the device or what stands for it.
	Point, Source string
	FSType        string
	// Root is the directory of the filesystem mounted there: "/" for a
	// mount of a whole filesystem, another for a bind mount.
	Root string
	// Device is the filesystem's device number.
	Device   uint64
	ReadOnly bool
	// Upper and Lowers are an overlay's upper and lower directories.
	Upper  string
	Lowers []string
}

// ReadMountTable reads the loop devices and the mount table.
func ReadMountTable() (*MountTable, error) {
	t, err := readLoops()
	if err != nil {
		return nil, err
	}
	return t, t.readMounts(nil)
}

// ReadMountsBelow reads the mounts on dir and below it, and no loop device:
// a table whose Find sees no image, for lookups by mount point.
func ReadMountsBelow(dir string) (*MountTable, error) {
	if d, err := canonical(dir); err == nil {
		dir = d
	}
	t := &MountTable{loops: map[string][]string{}}
	return t, t.readMounts(mountinfo.PrefixFilter(dir))
}

// readMounts fills the table's mounts from the mount table.
func (t *MountTable) readMounts(filter mountinfo.FilterFunc) error {
	infos, err := mountinfo.GetMounts(filter)
	if err != nil {
		return fmt.Errorf("read the mount table: %w", err)
	}
	t.devices, t.tops = map[uint64][]int{}, map[string]MountEntry{}
	for _, mi := range infos {
		e := entryOf(mi)
		t.entries = append(t.entries, e)
		t.tops[e.Point] = e // a later line is mounted over an earlier one
		t.devices[e.Device] = append(t.devices[e.Device], len(t.entries)-1)
	}
	return nil
}

// entryOf reads one line of the mount table.
func entryOf(mi *mountinfo.Info) MountEntry {
	e := MountEntry{
		Point: mi.Mountpoint, Source: mi.Source, FSType: mi.FSType, Root: mi.Root,
		Device:   unix.Mkdev(uint32(mi.Major), uint32(mi.Minor)),
		ReadOnly: slices.Contains(strings.Split(mi.Options, ","), "ro"),
	}
	if mi.FSType == "overlay" {
		for _, o := range strings.Split(mi.VFSOptions, ",") {
			if up, ok := strings.CutPrefix(o, "upperdir="); ok {
				e.Upper = up
			}
			if lower, ok := strings.CutPrefix(o, "lowerdir="); ok {
				e.Lowers = strings.Split(lower, ":")
			}
		}
	}
	return e
}

// At returns the top mount on dir, if anything is mounted on it.
func (t *MountTable) At(dir string) (MountEntry, bool) {
	if d, err := canonical(dir); err == nil {
		dir = d
	}
	e, ok := t.tops[dir]
	return e, ok
}

// Overlays returns every overlay mount.
func (t *MountTable) Overlays() []MountEntry {
	var out []MountEntry
	for _, e := range t.entries {
		if e.FSType == "overlay" {
			out = append(out, e)
		}
	}
	return out
}

// OnDevice returns every mount of the filesystem on the block device at
// path dev (a loop device): none if it is gone.
func (t *MountTable) OnDevice(dev string) []MountEntry {
	var st unix.Stat_t
	if unix.Stat(dev, &st) != nil {
		return nil
	}
	var out []MountEntry
	for _, i := range t.devices[st.Rdev] {
		out = append(out, t.entries[i])
	}
	return out
}

// MountedAt returns the image at path as the table shows it mounted on dir,
// without asking sysfs which device backs it: for a table of
// ReadMountsBelow, when the caller knows which image dir holds.
func (t *MountTable) MountedAt(path, dir string) (*Mounted, bool) {
	e, ok := t.At(dir)
	if !ok {
		return nil, false
	}
	img, err := canonical(path)
	if err != nil {
		img = filepath.Clean(path)
	}
	return &Mounted{Image: img, Device: e.Source, Dir: e.Point, ReadOnly: e.ReadOnly}, true
}

// IsMountPoint reports whether something is mounted on dir, by one stat
// pair: a mount point has another device than its parent directory. It
// does not see a bind mount of a directory of the same filesystem.
func IsMountPoint(dir string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
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

// backs reports whether the loop device is attached to the image file at
// the canonical path target, which st describes: sysfs names the path, the
// device's status the inode (a path can be reused by a new file).
func backs(dev, target string, st unix.Stat_t) bool {
	file, ok := backingFile(filepath.Base(dev))
	return ok && file == target && backedBy(dev, st)
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
		for _, i := range t.devices[st.Rdev] {
			if e := t.entries[i]; e.Root == "/" { // its first mount of the whole filesystem
				return &Mounted{Image: img, Device: dev, Dir: e.Point, ReadOnly: e.ReadOnly}, nil
			}
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
	for _, e := range t.entries {
		if p := e.Point; p == dir || strings.HasPrefix(p, dir+"/") {
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
