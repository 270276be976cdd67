package imagefs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/failpoint"
)

// MinQuota is the smallest image Create makes: ext4's metadata, a 4 MiB
// journal and room for a first window.
const MinQuota = 32 << 20

// MaxSize is the largest image: ext4 on a host filesystem of 4 KiB blocks
// cannot hold a larger file.
const MaxSize = 16 << 40

// The inode counts Create accepts: ext4 needs a few for itself, and
// counts inodes in 32 bits.
const (
	MinInodes = 1024
	MaxInodes = 1<<32 - 1
)

// MinJournal is the smallest ext4 journal (1024 blocks of 4 KiB).
const MinJournal = 4 << 20

// CreateOptions shape a new image.
type CreateOptions struct {
	// Quota is the most its container can store. It is rounded down to a
	// multiple of 4 KiB.
	Quota int64
	// Ceiling is the filesystem's size: the most the quota can be raised
	// to online (SetQuota). 0, or less than Quota, means Quota.
	Ceiling int64
	// Window is the initial packing window (clamped to the quota).
	Window int64
	// JournalSize is the ext4 journal size (at least 4 MiB).
	JournalSize int64
	// BytesPerInode sets the inode count when Inodes is 0: one inode per
	// this many bytes of the quota.
	BytesPerInode int64
	// Inodes is the most files, directories and links the image holds
	// (ext4 rounds it up to fill its block groups); 0 derives it from the
	// quota and BytesPerInode. It is fixed when the image is made: raising
	// the quota later does not add inodes.
	Inodes int64
	// DirectIO attaches the image with direct I/O while Create fills it.
	DirectIO bool
	// FastCommit formats the image with ext4 fast commits (see mkfs).
	FastCommit bool
}

func (o *CreateOptions) normalize() error {
	o.Quota = RoundQuota(o.Quota)
	if o.Quota < MinQuota {
		return fmt.Errorf("%w: %d bytes is below the minimum %d (32MiB)", ErrQuotaTooSmall, o.Quota, MinQuota)
	}
	if o.JournalSize == 0 {
		o.JournalSize = MinJournal
	}
	if o.JournalSize < MinJournal || o.JournalSize > o.Quota/4 {
		return fmt.Errorf("journal size %d must be between 4MiB and a quarter of the quota", o.JournalSize)
	}
	if o.BytesPerInode == 0 {
		o.BytesPerInode = 16 << 10
	}
	if o.Window <= 0 || o.Window > o.Quota {
		o.Window = o.Quota
	}
	o.Ceiling = max(o.Quota, o.Ceiling/loopBlockSize*loopBlockSize)
	if o.Inodes == 0 {
		o.Inodes = max(o.Quota/o.BytesPerInode, MinInodes)
	}
	if o.Inodes < MinInodes || o.Inodes > MaxInodes {
		return fmt.Errorf("%d inodes is outside %d..%d", o.Inodes, MinInodes, int64(MaxInodes))
	}
	return nil
}

// tempSuffix marks files Create and Shrink are still building. A crash leaves
// them behind; RemoveTemporaries deletes them.
const tempSuffix = ".snug-tmp"

// TempSuffix ends the name of a file a caller builds next to an image and
// renames over it: RemoveTemporaries deletes what a crash left of it.
const TempSuffix = tempSuffix

// Create makes a thin image at path: a sparse file of the quota size holding
// an ext4 filesystem made for thin use (see mkfs), with its balloon inflated
// beyond the initial window. The image is built under a temporary name and
// renamed into place only when complete, so a failure (a full host disk, a
// missing mkfs) leaves nothing behind, and an existing file is never touched.
func Create(ctx context.Context, path string, o CreateOptions) (err error) {
	uuid, tmp, err := startCreate(path, &o)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, HostError(err))
	}
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	terr := f.Truncate(o.Ceiling)
	cerr := f.Close()
	if terr != nil || cerr != nil {
		return fmt.Errorf("create %s: %w", path, HostError(errors.Join(terr, cerr)))
	}
	if err := mkfs(ctx, tmp, mkfsOptions{JournalBytes: o.JournalSize, Inodes: o.Inodes, FastCommit: o.FastCommit, UUID: uuid}); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := placeBalloon(ctx, tmp, o.Window, o.Quota, o.Inodes, o.DirectIO); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := withFile(tmp, emptyJournalLog); err != nil {
		return fmt.Errorf("create %s: %w", path, HostError(err))
	}
	return publishImage(tmp, path)
}

// withFile runs fn on the file at path, open for reading and writing.
func withFile(path string, fn func(*os.File) error) error {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return fn(f)
}

// startCreate checks the options and that nothing is at path, and picks
// the new image's UUID and the temporary name it is built under.
func startCreate(path string, o *CreateOptions) (uuid, tmp string, err error) {
	if err := o.normalize(); err != nil {
		return "", "", fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := os.Lstat(path); err == nil {
		return "", "", fmt.Errorf("create %s: %w", path, ErrExists)
	}
	if uuid, err = newUUID(); err != nil {
		return "", "", err
	}
	return uuid, path + "." + uuid[:8] + tempSuffix, nil
}

// publishImage makes the finished temporary tmp durable and renames it to
// path, never over an existing file.
func publishImage(tmp, path string) error {
	if err := fsyncPath(tmp); err != nil {
		return fmt.Errorf("create %s: %w", path, HostError(err))
	}
	if err := renameImage(tmp, path); err != nil {
		return err
	}
	return fsyncPath(filepath.Dir(path))
}

// renameImage renames the finished temporary tmp to path, never over an
// existing file.
func renameImage(tmp, path string) error {
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create %s: %w", path, ErrExists)
		}
		return fmt.Errorf("create %s: %w", path, err)
	}
	return nil
}

// placeBalloon mounts a fresh or shrunk image privately and inflates its
// balloon so that only the first window bytes are free.
func placeBalloon(ctx context.Context, path string, window, quota, inodes int64, directIO bool) error {
	m, err := MountDetached(ctx, path, MountOptions{DirectIO: directIO})
	if err != nil {
		return err
	}
	failpoint.Inject("create-mounted")
	err = createBalloon(m.Dir, quota, inodes)
	if err == nil {
		err = m.resetWindow(ctx, window)
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return errors.Join(err, m.Unmount(uctx))
}

// resetWindow inflates the balloon over all free space and releases what
// lies below window.
func (m *Mounted) resetWindow(ctx context.Context, window int64) error {
	return m.withBalloon(ctx, func(b *balloon) error {
		if err := b.inflate(); err != nil {
			return err
		}
		exts, err := b.extents()
		if err != nil {
			return err
		}
		_, err = b.releaseBelow(exts, window)
		return err
	})
}

// RemoveTemporaries deletes what an interrupted Create or Shrink left in dir,
// first releasing a temporary that a killed process of an earlier version
// left mounted privately (see ReleaseStale).
// A temporary attached any other way is left alone.
func RemoveTemporaries(ctx context.Context, dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), tempSuffix) || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if _, err := ReleaseStale(ctx, p); err != nil {
			return removed, err
		}
		if attached, err := IsAttached(p); err != nil || attached {
			continue
		}
		if err := os.Remove(p); err != nil {
			return removed, err
		}
		removed = append(removed, p)
	}
	return removed, nil
}

func fsyncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// HostError marks errors that mean the host filesystem is full (of blocks
// or of inodes) with ErrHostFull, so that the message says so.
func HostError(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrHostFull, err)
	}
	return err
}
