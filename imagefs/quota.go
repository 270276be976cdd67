package imagefs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/internal/errclass"
	"github.com/snugfs/snug/internal/units"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/failpoint"
)

// An image's quota and its ceiling. The ceiling is the filesystem's size,
// fixed when the image is made (online resize needs CAP_SYS_RESOURCE, which
// container hosts often lack, and this kernel may have no quota support at
// all). The quota is at most the ceiling and is enforced by the balloon: it
// always holds at least what the filesystem has beyond the quota (its floor,
// see quotaFloor), so files can never take more than the quota. Changing the quota is then a balloon
// operation, online, both ways: lowering inflates the balloon up to the new
// floor from free space, raising only lowers the floor, and the window grows
// into the space on demand.
//
// The quota is recorded in the image itself, as an extended attribute of
// the balloon, so it survives any crash with the filesystem and needs no
// other record. An image without it (older, or made at its ceiling) has a
// quota equal to its ceiling.
const quotaXattr = "trusted.snug.quota"

// inodesXattr records, on the balloon, the inode count the image was made
// for (CreateOptions.Inodes; ext4 rounds it up), so a later request for
// the same count is known to be met.
const inodesXattr = "trusted.snug.inodes"

// InodesAsked returns the inode count the mounted image was made for, 0
// when it does not record one (an older image, or one shrunk offline).
func (m *Mounted) InodesAsked() (int64, error) {
	buf := make([]byte, 32)
	n, err := unix.Getxattr(balloonPath(m.Dir), inodesXattr, buf)
	if errors.Is(err, unix.ENODATA) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w", m.Image, err)
	}
	v, err := strconv.ParseInt(string(buf[:n]), 10, 64)
	if err != nil || v < 0 {
		return 0, nil
	}
	return v, nil
}

// ErrQuotaAboveCeiling is returned when a quota would exceed the image's
// ceiling (its filesystem size).
var ErrQuotaAboveCeiling = errclass.New("quota above the image's ceiling", errdefs.ErrInvalidArgument)

// ErrQuotaBelowUsage is returned when a quota would be lower than what the
// image stores now.
var ErrQuotaBelowUsage = errclass.New("quota below what the container stores", errdefs.ErrInvalidArgument)

// readQuota returns the quota recorded on the balloon f, or ceiling when
// none is. A record above the ceiling (an image shrunk offline below it) is
// the ceiling.
func readQuota(f *os.File, ceiling int64) (int64, error) {
	buf := make([]byte, 32)
	n, err := unix.Fgetxattr(int(f.Fd()), quotaXattr, buf)
	if errors.Is(err, unix.ENODATA) {
		return ceiling, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read quota of %s: %w", f.Name(), err)
	}
	q, err := parseQuota(string(buf[:n]))
	if err != nil {
		return 0, fmt.Errorf("read quota of %s: %w", f.Name(), err)
	}
	return min(q, ceiling), nil
}

// parseQuota reads a quota record: a decimal byte count, at least MinQuota.
func parseQuota(s string) (int64, error) {
	q, err := strconv.ParseInt(s, 10, 64)
	if err != nil || q < MinQuota {
		return 0, fmt.Errorf("bad quota record %q", s)
	}
	return q, nil
}

// writeQuota records quota on the balloon f, durably: the change is in the
// journal when it returns. A quota equal to ceiling is recorded too, so the
// record always says what was asked last.
func writeQuota(f *os.File, quota int64) error {
	if err := unix.Fsetxattr(int(f.Fd()), quotaXattr, []byte(strconv.FormatInt(quota, 10)), 0); err != nil {
		return fmt.Errorf("record quota: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("record quota: %w", err)
	}
	return nil
}

// Quota returns the mounted image's quota.
func (m *Mounted) Quota() (int64, error) {
	sb, err := ReadSuperblock(m.Image)
	if err != nil {
		return 0, err
	}
	f, err := os.Open(balloonPath(m.Dir))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", m.Image, err)
	}
	defer f.Close()
	return readQuota(f, sb.Size())
}

// QuotaChange says what SetQuota did (api.QuotaChange).
type QuotaChange = api.QuotaChange

// RoundQuota is the quota an image records for n bytes: n rounded down to
// the image's block size.
func RoundQuota(n int64) int64 { return n / loopBlockSize * loopBlockSize }

// SetQuota changes the quota of the mounted image while its container may
// write. A quota above the ceiling is refused (ErrQuotaAboveCeiling), and so
// is one the free space cannot make room for in the balloon: less than the
// image stores now (ErrQuotaBelowUsage). A refused change leaves the image
// as it was. Lowering inflates the balloon before the new quota is
// recorded, raising records it at once: a crash in between leaves the old
// quota in force, or the new one with more balloon than it needs, which the
// window gives back on demand.
func (m *Mounted) SetQuota(ctx context.Context, quota int64) (QuotaChange, error) {
	var ch QuotaChange
	quota = RoundQuota(quota)
	err := m.withBalloon(ctx, func(b *balloon) error {
		ch.QuotaBefore, ch.QuotaAfter, ch.CeilingBytes = b.quota, b.quota, b.fsSize
		exts, err := b.extents()
		if err != nil {
			return err
		}
		ch.BalloonBefore = sizeOf(exts)
		ch.BalloonAfter = ch.BalloonBefore
		var sfs unix.Statfs_t
		if err := unix.Fstatfs(int(b.f.Fd()), &sfs); err != nil {
			return err
		}
		avail := int64(sfs.Bavail) * sfs.Bsize
		ch.UsedBytes = max(0, int64(sfs.Blocks-sfs.Bfree)*sfs.Bsize-ch.BalloonBefore)
		switch {
		case quota < MinQuota:
			return fmt.Errorf("%w: %s is below the minimum %s", ErrQuotaTooSmall, units.FormatBytes(quota), units.FormatBytes(MinQuota))
		case quota > b.fsSize:
			return fmt.Errorf("%w: %s is above the ceiling %s", ErrQuotaAboveCeiling, units.FormatBytes(quota), units.FormatBytes(b.fsSize))
		}
		need := quotaFloor(&sfs, quota, reserveBytes(b.sysfs, sfs.Bsize)) - ch.BalloonBefore
		if need > avail {
			return fmt.Errorf("%w: it stores %s, more than a quota of %s holds",
				ErrQuotaBelowUsage, units.FormatBytes(ch.UsedBytes), units.FormatBytes(quota))
		}
		if need > 0 {
			added, err := b.inflateBy(need)
			if err != nil {
				b.deflate(added)
				if errors.Is(err, unix.ENOSPC) {
					return fmt.Errorf("%w: the container wrote the room the quota needs while it was being lowered", ErrQuotaBelowUsage)
				}
				return err
			}
			ch.BalloonAfter += need
			failpoint.Inject("quota-inflated") // the old quota, a balloon big enough for the new
		}
		if err := writeQuota(b.f, quota); err != nil {
			return err
		}
		failpoint.Inject("quota-recorded")
		b.quota, ch.QuotaAfter = quota, quota
		return nil
	})
	if err != nil {
		return ch, fmt.Errorf("set quota of %s: %w", m.Image, err)
	}
	return ch, nil
}

// inflateBy gives the balloon n more bytes of free blocks, filling holes of
// its logical range in order. It returns the ranges it allocated, even on
// an error (ENOSPC: a writer took the space meanwhile), so they can be
// given back.
func (b *balloon) inflateBy(n int64) ([]extent, error) {
	if err := b.f.Truncate(b.fsSize); err != nil {
		return nil, fmt.Errorf("size balloon: %w", err)
	}
	exts, err := b.extents()
	if err != nil {
		return nil, err
	}
	sort.Slice(exts, func(i, j int) bool { return exts[i].Logical < exts[j].Logical })
	var added []extent
	var at int64
	fill := func(end int64) error {
		for at < end && n > 0 {
			k := min(end-at, b.roundUp(n))
			// ext4 keeps what a failed fallocate allocated: the range
			// goes in added either way.
			added = append(added, extent{Logical: at, Length: k})
			if err := unix.Fallocate(int(b.f.Fd()), 0, at, k); err != nil {
				return fmt.Errorf("inflate balloon: %w", err)
			}
			at += k
			n -= k
		}
		return nil
	}
	for _, e := range exts {
		if err := fill(e.Logical); err != nil {
			return added, err
		}
		at = max(at, e.Logical+e.Length)
	}
	return added, fill(b.fsSize)
}

// deflate punches out the logical ranges inflateBy added (all of a failed
// one: it was a hole before).
func (b *balloon) deflate(ranges []extent) {
	for _, r := range ranges {
		b.punch(r.Logical, r.Length)
	}
}

// floor is the least the balloon must hold for the quota to hold.
func (b *balloon) floor() (int64, error) {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(b.f.Fd()), &sfs); err != nil {
		return 0, err
	}
	return quotaFloor(&sfs, b.quota, reserveBytes(b.sysfs, sfs.Bsize)), nil
}

// quotaFloor is the least the balloon must hold so that files can take no
// more than quota: statfs's block count (the filesystem less ext4's own
// metadata) less the quota and less ext4's reserve (resv bytes: free blocks
// it keeps back from ordinary allocations, up to 16 MiB, which is not the
// container's to use either way). Files and directories so get the whole
// quota, and the metadata and reserve of a larger ceiling cost the
// container nothing.
func quotaFloor(sfs *unix.Statfs_t, quota, resv int64) int64 {
	return max(0, int64(sfs.Blocks)*sfs.Bsize-quota-resv)
}

// reserveBytes is ext4's reserve of the filesystem whose sysfs directory
// is dir (reserved_clusters; snug's images have one block per cluster),
// 0 if it cannot be read: the floor is then higher, never lower.
func reserveBytes(dir string, bsize int64) int64 {
	b, err := os.ReadFile(filepath.Join(dir, "reserved_clusters"))
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n * bsize
}
