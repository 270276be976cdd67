package roottest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Sweep unmounts every mount below dir (deepest first) and detaches every
// loop device whose backing file is below dir. A loop device that is still
// attached after that (its filesystem lives on somewhere) is a leak, and an
// error: it would pin its image file's blocks and a device number on the
// host after the test.
func Sweep(dir string) error {
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return err
	}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return err
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
	var errs []error
	for _, m := range mounts {
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil {
			errs = append(errs, err)
		}
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || !strings.HasPrefix(strings.TrimSpace(string(b)), dir+"/") {
			continue
		}
		dev := "/dev/" + strings.Split(f, "/")[3]
		fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
			errs = append(errs, err)
		}
		unix.Close(fd)
	}
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		left, err := Leftovers(dir)
		if err != nil || len(left) == 0 {
			return errors.Join(append(errs, err)...)
		}
		if time.Now().After(end) {
			return errors.Join(append(errs, fmt.Errorf("still there after the sweep of %s: %s", dir, strings.Join(left, "; ")))...)
		}
	}
}

// Leftovers lists the mounts below dir and the loop devices whose backing
// file is below dir (deleted or not), as "MOUNTPOINT (FSTYPE)" and
// "DEVICE -> FILE". A test that stopped everything it started expects none.
func Leftovers(dir string) ([]string, error) {
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, err
	}
	var left []string
	for _, m := range mounts {
		left = append(left, fmt.Sprintf("%s (%s)", m.Mountpoint, m.FSType))
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // detached while we looked
		}
		file := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if strings.HasPrefix(file, dir+"/") {
			left = append(left, "/dev/"+strings.Split(f, "/")[3]+" -> "+strings.TrimSpace(string(b)))
		}
	}
	return left, nil
}
