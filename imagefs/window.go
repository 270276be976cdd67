package imagefs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/internal/failpoint"
)

// withBalloon runs fn with the image locked and its balloon open.
func (m *Mounted) withBalloon(ctx context.Context, fn func(b *balloon) error) error {
	if m.ReadOnly {
		return fmt.Errorf("%s: mounted read-only", m.Image)
	}
	unlock, err := lockImage(ctx, m.Image)
	if err != nil {
		return err
	}
	defer unlock()
	sb, err := ReadSuperblock(m.Image)
	if err != nil {
		return err
	}
	b, err := openBalloon(m.Dir, m.Device, sb.Size())
	if err != nil {
		return fmt.Errorf("%s: %w", m.Image, err)
	}
	defer b.Close()
	return fn(b)
}

// Grow moves the end of the packing window to at least window bytes (up to
// the quota). It never shrinks the window: that is Reclaim's job. It returns
// the window after the call. Growing to the current window is a no-op.
func (m *Mounted) Grow(ctx context.Context, window int64) (int64, error) {
	var after int64
	err := m.withBalloon(ctx, func(b *balloon) error {
		exts, err := b.extents()
		if err != nil {
			return err
		}
		if _, err := b.releaseBelow(exts, window); err != nil {
			return err
		}
		exts, err = b.extents()
		after = windowOf(exts, b.fsSize)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("grow %s: %w", m.Image, err)
	}
	return after, nil
}

// EnsureFree makes sure at least free bytes are available to files inside
// the window, growing it (lowest balloon blocks first) as needed. It returns
// the bytes the window grew by; that is short of what was needed only when
// the quota is reached.
func (m *Mounted) EnsureFree(ctx context.Context, free int64) (int64, error) {
	// Most calls find it free already (a start, a pool image placed): one
	// statfs then, without the image's lock and the balloon's FIEMAP.
	var sfs unix.Statfs_t
	if !m.ReadOnly && unix.Statfs(m.Dir, &sfs) == nil && int64(sfs.Bavail)*sfs.Bsize >= free {
		return 0, nil
	}
	var grown int64
	err := m.withBalloon(ctx, func(b *balloon) (err error) {
		grown, err = b.ensureFree(free)
		if grown > 0 {
			failpoint.Inject("grow-released")
		}
		return err
	})
	if err != nil {
		return grown, fmt.Errorf("grow %s: %w", m.Image, err)
	}
	return grown, nil
}

// ReclaimResult says what a Reclaim did (api.ReclaimResult).
type ReclaimResult = api.ReclaimResult

// ReclaimOptions say how far a Reclaim repacks.
type ReclaimOptions struct {
	// Headroom is the free space the window keeps after the repack.
	Headroom int64
	// Margin is free space the balloon leaves alone while it re-inflates.
	// 0 (a stopped container) packs tightest but leaves the filesystem full
	// for a few milliseconds; a running container needs a margin at least
	// as large as what it may write meanwhile, or it can see ENOSPC. Free
	// space the margin keeps may lie beyond the new window end.
	Margin int64
}

// Reclaim gives the host back what the container no longer uses, online:
// it commits the journal, trims every free block (FITRIM; the loop device
// punches them out of the image file), re-inflates the balloon over the free
// space (all of it, or all but the margin) and punches it out of the image
// file too, then releases headroom bytes of balloon, lowest physical
// addresses first. The window ends up just past the data plus headroom.
func (m *Mounted) Reclaim(ctx context.Context, o ReclaimOptions) (ReclaimResult, error) {
	start := time.Now()
	var res ReclaimResult
	err := m.withBalloon(ctx, func(b *balloon) error {
		img, err := os.OpenFile(m.Image, os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer img.Close()
		res.FootprintBefore, _ = footprint(img)
		exts, err := b.extents()
		if err != nil {
			return err
		}
		res.WindowBefore = windowOf(exts, b.fsSize)
		// Blocks freed by deletions are free only once the journal commits.
		if err := unix.Syncfs(int(b.f.Fd())); err != nil {
			return fmt.Errorf("syncfs: %w", err)
		}
		if res.TrimmedBytes, err = fitrim(m.Dir); err != nil {
			return err
		}
		if o.Margin > 0 {
			err = b.inflateLeaving(o.Margin)
		} else {
			err = b.inflate()
		}
		if err != nil {
			return err
		}
		if exts, err = b.extents(); err != nil {
			return err
		}
		if err := b.punchHost(img, exts); err != nil {
			return err
		}
		failpoint.Inject("reclaim-packed") // the balloon holds all free space
		if _, err := b.ensureFree(o.Headroom); err != nil {
			return err
		}
		if exts, err = b.extents(); err != nil {
			return err
		}
		res.WindowAfter = windowOf(exts, b.fsSize)
		res.FootprintAfter, err = footprint(img)
		return err
	})
	res.Duration = time.Since(start)
	if err != nil {
		return res, fmt.Errorf("reclaim %s: %w", m.Image, err)
	}
	return res, nil
}

// PackedFootprint is the most host space a packed image of used bytes
// takes: 1.03 × used + 8 MiB, the bound a reclaim on stop packs to (ext4's
// metadata, the journal and the balloon's extent tree on top of the data).
func PackedFootprint(used int64) int64 { return used*103/100 + 8<<20 }

// Packed reports whether a stopped container's image has nothing a
// reclaim would do: once the journal commits what was deleted (a syncfs),
// its file holds no more on the host than PackedFootprint of its used
// space, and its window has at most maxFree
// free (the policy's headroom and a margin: a window the container grew
// and then emptied is repacked, so that a restart starts packed). A
// reclaim costs a sync, a trim and a repack of the balloon (hundreds of
// milliseconds under load); many containers write next to nothing, and
// most of those run with --rm, their image deleted whole a moment later.
func (m *Mounted) Packed(maxFree int64) (bool, Stats, error) {
	if err := syncfs(m.Dir); err != nil {
		return false, Stats{}, err
	}
	st, err := m.Stat()
	if err != nil {
		return false, st, err
	}
	return st.FootprintBytes <= PackedFootprint(st.UsedBytes) && st.FreeBytes <= maxFree, st, nil
}

// Trim discards the free blocks of the window (FITRIM) without touching the
// balloon: the cheap half of Reclaim, safe while the container writes.
// Blocks a deletion freed are free for FITRIM only once the journal
// transaction that freed them commits, so Trim commits it first: it touches
// a file of its own and fsyncs it, which commits the running transaction
// without writing back the container's dirty data (a sync would). ext4
// skips block groups that had no frees since their last trim, so a repeated
// Trim costs little.
func (m *Mounted) Trim(ctx context.Context) (int64, error) {
	unlock, err := lockImage(ctx, m.Image)
	if err != nil {
		return 0, fmt.Errorf("trim %s: %w", m.Image, err)
	}
	defer unlock()
	if err := commitJournal(m.Dir); err != nil {
		return 0, fmt.Errorf("trim %s: commit: %w", m.Image, err)
	}
	n, err := fitrim(m.Dir)
	if err != nil {
		return 0, fmt.Errorf("trim %s: %w", m.Image, err)
	}
	return n, nil
}

// commitJournal makes ext4 commit its running transaction: it changes the
// times of /.snug/commit (a metadata change, logged in that transaction)
// and fsyncs the file, which waits for the transaction's commit.
func commitJournal(dir string) error {
	f, err := os.OpenFile(filepath.Join(dir, MetaDir, "commit"), os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	tv := unix.NsecToTimeval(time.Now().UnixNano())
	if err := unix.Futimes(int(f.Fd()), []unix.Timeval{tv, tv}); err != nil {
		return err
	}
	return f.Sync()
}

// footprint is what the image file costs on the host: its allocated bytes.
func footprint(f *os.File) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// Footprint is what the image file at path costs the host: its allocated
// bytes (one stat, no lock, safe on a mounted image).
func Footprint(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("footprint of %s: %w", path, err)
	}
	return st.Blocks * 512, nil
}
