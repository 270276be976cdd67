package imagefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// offline locks an image that must not be attached anywhere and runs fn.
func offline(ctx context.Context, op, path string, fn func() error) error {
	if _, err := ReadSuperblock(path); err != nil {
		return fmt.Errorf("%s %s: %w", op, path, err)
	}
	return offlineLocked(ctx, op, path, fn)
}

// offlineLocked is offline without reading the primary superblock first:
// a repair must reach an image whose primary superblock is damaged (e2fsck
// then works from a backup). The file must still be a regular file.
func offlineLocked(ctx context.Context, op, path string, fn func() error) error {
	if st, err := os.Stat(path); err != nil {
		return fmt.Errorf("%s %s: %w", op, path, err)
	} else if !st.Mode().IsRegular() {
		return fmt.Errorf("%s %s: %w: not a regular file", op, path, ErrNotImage)
	}
	unlock, err := lockImage(ctx, path)
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, path, err)
	}
	defer unlock()
	if attached, err := IsAttached(path); err != nil {
		return err
	} else if attached {
		return fmt.Errorf("%s %s: %w (unmount it first)", op, path, ErrInUse)
	}
	return fn()
}

// Check runs a forced read-only e2fsck (e2fsck -fn) on an unmounted image.
// Findings are in the result (Uncorrected); the error is for a check that
// could not run.
func Check(ctx context.Context, path string) (FsckResult, error) {
	var res FsckResult
	err := offline(ctx, "check", path, func() (err error) {
		res, err = e2fsck(ctx, path, "check", "-f", "-n")
		return err
	})
	return res, err
}

// CheckClean checks an unmounted image as a mount is about to use it:
// nil for a clean image, an error wrapping ErrDamaged for one that is not
// (damage found; a superblock that cannot be read; e2fsck exit 8 or 12, or
// ctx ending, so that the check could not finish), and any other error for
// a check that could not run at all (e2fsck missing, the image attached).
// An unreplayed journal is replayed first by a private mount, as the mount
// to come would replay it: e2fsck -n does not, and would judge metadata the
// journal completes.
func CheckClean(ctx context.Context, path string) error {
	sb, err := ReadSuperblock(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDamaged, err)
	}
	if sb.NeedsRecov {
		if err := WithMount(ctx, path, MountOptions{}, func(*Mounted) error { return nil }); err != nil {
			return fmt.Errorf("%w: the journal could not be replayed: %w", ErrDamaged, err)
		}
	}
	res, err := Check(ctx, path)
	switch {
	case errors.Is(err, ErrToolFailed) || ctx.Err() != nil:
		return fmt.Errorf("%w: e2fsck -fn could not finish: %w", ErrDamaged, err)
	case err != nil:
		return err
	case !res.Clean():
		return fmt.Errorf("%w: e2fsck -fn %s: %s", ErrDamaged, res.Status(), lastLines(res.Output, 2))
	}
	return nil
}

// Repair runs e2fsck to fix an unmounted image: it replays the journal
// first, then fixes what it finds (-fy, or -fp for RepairPreen). A damaged
// primary superblock is no obstacle: e2fsck finds a backup.
func Repair(ctx context.Context, path string, mode RepairMode) (FsckResult, error) {
	var res FsckResult
	replayed, rerr := replayFastCommits(ctx, path)
	err := offlineLocked(ctx, "repair", path, func() (err error) {
		switch mode {
		case RepairYes, "":
			res, err = e2fsck(ctx, path, "repair", "-f", "-y")
		case RepairPreen:
			res, err = e2fsck(ctx, path, "preen", "-f", "-p")
		case RepairFromBackup:
			res, err = e2fsck(ctx, path, "repair", "-f", "-y", "-b", backupSuperblock, "-B", strconv.Itoa(loopBlockSize))
		default:
			err = fmt.Errorf("unknown repair mode %q", mode)
		}
		return err
	})
	switch {
	case replayed:
		res.Output = "journal and fast commits replayed by the kernel (a private mount) before e2fsck\n" + res.Output
	case rerr != nil && err == nil:
		res.Output = fmt.Sprintf("the kernel could not replay the journal (%v): e2fsck replayed it\n", rerr) + res.Output
	}
	return res, err
}

// replayFastCommits lets the kernel replay the journal of an image whose
// journal holds fast commits not yet replayed: it mounts the image
// privately and unmounts it. e2fsck 1.47.0 (Debian 12) replays fast
// commits wrongly: on a crash image that the kernel recovers whole, it
// dropped a directory's entry and disconnected its files into lost+found
// (TestFsyncDurability, docs/design.md). An image with no fast-commit area,
// or nothing to replay, is left to e2fsck. The error is the mount's, when
// the kernel refused the image; e2fsck then replays it as before.
func replayFastCommits(ctx context.Context, path string) (bool, error) {
	sb, err := ReadSuperblock(path)
	if err != nil || !sb.FastCommit || !sb.NeedsRecov {
		return false, nil
	}
	if err := WithMount(ctx, path, MountOptions{}, func(*Mounted) error { return nil }); err != nil {
		return false, err
	}
	return true, nil
}

// Shrink lowers the ceiling (the filesystem size) of an unmounted image
// offline, and its quota with it when that was higher: it works on a copy
// (a reflink where the host filesystem can, else a sparse copy), drops the
// balloon, checks the copy, resizes it with resize2fs, truncates the file,
// puts the balloon back with the old window, checks again and renames the
// copy over the image. Killed at any point, it leaves the image as it was (and
// a temporary file RemoveTemporaries deletes). A quota at or above the current
// one is a no-op.
func Shrink(ctx context.Context, path string, quota int64, directIO bool) error {
	quota = quota / loopBlockSize * loopBlockSize
	if quota < MinQuota {
		return fmt.Errorf("shrink %s: %w: %d is below the minimum %d", path, ErrQuotaTooSmall, quota, MinQuota)
	}
	// The window to restore after the resize, measured before the lock is
	// taken (Stat mounts the image read-only, which takes the lock too).
	st, err := Stat(ctx, path)
	if err != nil {
		return fmt.Errorf("shrink %s: %w", path, err)
	}
	return offline(ctx, "shrink", path, func() error {
		sb, err := ReadSuperblock(path)
		if err != nil {
			return err
		}
		if quota >= sb.Size() {
			return nil
		}
		if sb.HasErrors() || sb.NeedsRecov || st.WindowBytes < 0 {
			return fmt.Errorf("shrink %s: the image has errors or an unreplayed journal: repair it first", path)
		}
		tmp := path + ".shrink" + tempSuffix
		os.Remove(tmp)
		if err := copySparse(path, tmp); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("shrink %s: copy: %w", path, HostError(err))
		}
		if err := shrinkCopy(ctx, tmp, quota, min(quota, st.QuotaBytes), st.WindowBytes, directIO); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("shrink %s: %w", path, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("shrink %s: %w", path, err)
		}
		return nil
	})
}

// shrinkCopy resizes the copy tmp to size bytes (its new ceiling) and
// puts the balloon back with the window and quota given.
func shrinkCopy(ctx context.Context, tmp string, size, quota, window int64, directIO bool) error {
	// resize2fs must move every block beyond the new end; the balloon's
	// blocks are just free space, so it goes first.
	if err := WithMount(ctx, tmp, MountOptions{DirectIO: directIO}, func(m *Mounted) error {
		return os.Remove(balloonPath(m.Dir))
	}); err != nil {
		return err
	}
	res, err := e2fsck(ctx, tmp, "repair", "-f", "-y")
	if err != nil {
		return err
	}
	if res.Uncorrected() {
		return fmt.Errorf("e2fsck before resize: %s", lastLines(res.Output, 3))
	}
	run, err := runTool(ctx, "resize2fs", tmp, strconv.FormatInt(size>>10, 10)+"K")
	if err != nil {
		return err
	}
	if run.ExitCode != 0 {
		if strings.Contains(run.Stderr, "smaller than minimum") || strings.Contains(run.Stderr, "No space left") {
			return fmt.Errorf("%w: the data needs more than %d bytes: %s", ErrQuotaTooSmall, size, lastLines(strings.TrimSpace(run.Stderr), 2))
		}
		return run.failure("resize2fs")
	}
	if err := os.Truncate(tmp, size); err != nil {
		return err
	}
	if err := placeBalloon(ctx, tmp, min(window, quota), quota, 0, directIO); err != nil {
		return err
	}
	res, err = e2fsck(ctx, tmp, "check", "-f", "-n")
	if err != nil {
		return err
	}
	if !res.Clean() {
		return fmt.Errorf("e2fsck after resize is not clean: %s", lastLines(res.Output, 3))
	}
	return fsyncPath(tmp)
}

// copySparse copies src to a new file dst, cheaply (copyInto), and syncs
// the copy.
func copySparse(src, dst string) error {
	return withCopy(src, dst, func(out *os.File) error { return out.Sync() })
}

// withCopy copies src to a new file dst (copyInto) and runs then with the
// copy still open.
func withCopy(src, dst string, then func(out *os.File) error) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := copyInto(in, out); err != nil {
		return err
	}
	return then(out)
}

// copyInto copies in to the empty file out, cheaply: a reflink (FICLONE)
// where the host filesystem shares blocks, otherwise only the data regions
// (SEEK_DATA/SEEK_HOLE) with copy_file_range, so holes stay holes. It does
// not sync.
func copyInto(in, out *os.File) error {
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return nil
	}
	st, err := in.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	if err := out.Truncate(size); err != nil {
		return err
	}
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		} else if err != nil {
			return err
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		for pos := data; pos < hole; {
			src, dst := pos, pos
			n, err := unix.CopyFileRange(int(in.Fd()), &src, int(out.Fd()), &dst, int(hole-pos), 0)
			if err != nil {
				return err
			}
			if n == 0 {
				return io.ErrUnexpectedEOF
			}
			pos += int64(n)
		}
		off = hole
	}
	return nil
}
