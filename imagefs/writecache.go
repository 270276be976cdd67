package imagefs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/log"
)

// errFlushesDropped: a loop device that drops its cache flushes.
var errFlushesDropped = errors.New("the loop device drops cache flushes (queue/write_cache is write through)")

// KeepFlushes makes sure the loop device (e.g. /dev/loop3) passes cache flushes
// on to the image file. What an fsync in the image promises rests on them:
// ext4 ends a commit with a flush, and the loop driver turns each flush into
// an fsync of the image file, which is what puts the data on the host's
// disk. The kernel gives a writable loop device a write-back cache, so
// flushes reach the driver; but "write through" written to
// /sys/block/loopN/queue/write_cache (by an operator, a tool, a test)
// outlives the attachment it was written for, and the block layer then
// completes every flush of every later image on that device without
// sending it: fsync returns, nothing reaches the disk, and nothing says so.
// Measured: 200 fsync'd writes in an ext4 image on such a device made no
// flush on the loop device or on the host disk. The override is cleared
// (writing "write back" undoes it) and said in the log; for a device whose
// cache cannot be made write-back it returns an error.
//
// Attach calls it for every read-write attachment; a restarted daemon calls
// it for each read-write image it finds mounted, attached by an earlier
// daemon (an older version, or a device changed since); the watcher calls
// it when it finds a mounted image's device changed (keepFlushes).
func KeepFlushes(ctx context.Context, device string) error {
	_, err := keepFlushes(ctx, device)
	return err
}

// keepFlushes is KeepFlushes, and reports whether the device was found
// dropping flushes (set back when err is nil).
func keepFlushes(ctx context.Context, device string) (found bool, err error) {
	path := writeCachePath(device)
	mode, err := readWriteCache(path)
	if err != nil {
		return false, err
	}
	if mode == "write back" {
		return false, nil
	}
	if err := os.WriteFile(path, []byte("write back"), 0); err != nil {
		return true, fmt.Errorf("%w, and it cannot be set to write back: %w", errFlushesDropped, err)
	}
	if mode, err = readWriteCache(path); err != nil {
		return true, err
	}
	if mode != "write back" {
		return true, fmt.Errorf("%w, and stays %q after setting write back", errFlushesDropped, mode)
	}
	log.G(ctx).WithField("device", device).Warn("the loop device's write cache was set to write through, which drops an image's flushes; set it back to write back")
	return true, nil
}

// writeCachePath is the sysfs file of a block device's cache mode.
func writeCachePath(device string) string {
	return "/sys/block/" + filepath.Base(device) + "/queue/write_cache"
}

// readWriteCache reads a block device's cache mode from sysfs.
func readWriteCache(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read the loop device's cache mode: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
