package imagefs

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
)

// mkfsOptions is how Create formats an image for thin use.
type mkfsOptions struct {
	JournalBytes int64
	Inodes       int64
	FastCommit   bool
	UUID         string
}

// mkfs formats the file at path as ext4 for a thin image:
//   - -m 0: no reserved blocks (root ignores them anyway, and they would only
//     make df lie);
//   - a small journal (every journal block is written sooner or later, so
//     its size is a fixed cost on the host), lazily initialised because the
//     file is new and already reads as zeros;
//   - no resize_inode: its reserved GDT blocks are zeroed at mkfs and cost
//     4 MiB on a 10 GiB image; snug sizes images at their full quota and
//     resizes them offline, where resize2fs does not need it;
//   - a set number of inodes (CreateOptions.Inodes), not one per so many
//     bytes of the filesystem: an image made at a high ceiling has the
//     inodes of its quota, and its inode tables, bitmaps and e2fsck time
//     stay those of a filesystem of that size (docs/benchmarks.md);
//   - lazy inode tables (mounts use noinit_itable so they stay unwritten);
//   - nodiscard: the file is new, there is nothing to discard;
//   - with FastCommit, ext4 fast commits: an fsync that only changes a
//     file's data and inode writes one fast-commit block (with a cache
//     flush before and after it, as a jbd2 commit has) instead of a jbd2
//     transaction of descriptor, metadata and commit blocks. mkfs adds the
//     fast-commit area to the journal (512 KiB to a 4 MiB one);
//   - an explicit random UUID: ext4's fsid, which fanotify reports, derives
//     from it, so two images must never share one;
//   - metadata_csum_seed: the metadata checksums are seeded from a field of
//     their own, not from the UUID, so a copy of an image (Templates) takes
//     a new UUID with a write of its superblocks (setUUIDInSuperblocks, as
//     tune2fs -U does) instead of a rewrite of every checksum.
func mkfs(ctx context.Context, path string, o mkfsOptions) error {
	journalMiB := (o.JournalBytes + (1<<20 - 1)) >> 20
	features := "^resize_inode,metadata_csum_seed"
	if o.FastCommit {
		features += ",fast_commit"
	}
	run, err := runTool(ctx, "mkfs.ext4",
		"-F", "-q", "-t", "ext4", "-b", "4096", "-m", "0",
		"-O", features,
		"-J", "size="+strconv.FormatInt(journalMiB, 10),
		"-N", strconv.FormatInt(o.Inodes, 10),
		"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0",
		"-U", o.UUID, "-L", "snug", path)
	if err != nil {
		return err
	}
	if run.ExitCode != 0 {
		return fmt.Errorf("format %s: %w", path, run.failure("mkfs.ext4"))
	}
	return nil
}

// newUUID returns a random (version 4) UUID.
func newUUID() (string, error) {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return "", err
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}
