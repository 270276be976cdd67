package integration

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/moby/sys/mountinfo"
)

// writableFootprint is what a running container's writable layer costs
// the host disk, in bytes allocated: the backing file of the loop device
// under it (snug, blockfile, erofs's ext4 layer), or the blocks of its
// overlay upper directory on the host disk (overlayfs).
func writableFootprint(container string) (int64, error) {
	dev, upper, err := writableLayer(container)
	if err != nil {
		return 0, err
	}
	if strings.HasPrefix(dev, "/dev/loop") {
		return loopBacking(dev)
	}
	return treeBlocks(upper)
}

// writableLayer finds a running container's writable layer: the block
// device its writes go to (a loop device, or the host disk under an
// overlayfs upper directory) and, for an overlay root, the upper
// directory.
func writableLayer(container string) (dev, upper string, err error) {
	mounts, err := mountinfo.GetMounts(nil)
	if err != nil {
		return "", "", err
	}
	suffix := "/io.containerd.runtime.v2.task/default/" + container + "/rootfs"
	var root *mountinfo.Info
	for _, m := range mounts {
		if strings.HasSuffix(m.Mountpoint, suffix) {
			root = m
		}
	}
	if root == nil {
		return "", "", fmt.Errorf("no root mount of container %s", container)
	}
	if root.FSType != "overlay" {
		dev, err := blockDevice(root)
		return dev, "", err
	}
	for _, o := range strings.Split(root.VFSOptions, ",") {
		if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			upper = v
		}
	}
	if upper == "" {
		return "", "", fmt.Errorf("container %s: overlay root without upperdir: %s", container, root.VFSOptions)
	}
	// The mount holding the upper directory: an image on a loop device,
	// or the host's own filesystem.
	var under *mountinfo.Info
	for _, m := range mounts {
		if (upper == m.Mountpoint || strings.HasPrefix(upper, strings.TrimSuffix(m.Mountpoint, "/")+"/")) &&
			(under == nil || len(m.Mountpoint) > len(under.Mountpoint)) {
			under = m
		}
	}
	if under == nil {
		return "", "", fmt.Errorf("container %s: no mount holds %s", container, upper)
	}
	dev, err = blockDevice(under)
	return dev, upper, err
}

// blockDevice is the device node of a mount's block device, found by its
// device number (a root mounted from "/dev/root" is vda in /proc/diskstats).
func blockDevice(m *mountinfo.Info) (string, error) {
	link, err := os.Readlink(fmt.Sprintf("/sys/dev/block/%d:%d", m.Major, m.Minor))
	if err != nil {
		return "", fmt.Errorf("the block device of %s (%s): %w", m.Mountpoint, m.Source, err)
	}
	return "/dev/" + filepath.Base(link), nil
}

// loopBacking is the allocated size of a loop device's backing file.
func loopBacking(dev string) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop/backing_file"))
	if err != nil {
		return 0, fmt.Errorf("%s is no loop device: %w", dev, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(strings.TrimSpace(string(b)), &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// treeBlocks sums the allocated blocks of every file under dir.
func treeBlocks(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		n += st.Blocks * 512
		return nil
	})
	return n, err
}
