package imagefs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"golang.org/x/sys/unix"
)

// The balloon is a file of fallocated, never-written (unwritten) extents that
// owns every free block of the filesystem beyond the packing window, so ext4
// can only allocate inside the window. Unwritten extents read as zeros and
// are holes in the image file: the balloon costs the host nothing.
//
// It lives in /.snug, beside the directories a container is given, never in
// them. Its extents are placed by physical address, not by file offset:
// inflate fallocates every hole of the file's logical range (ext4 gives it all
// free blocks, wherever they are), then release punches the ones with the
// lowest physical addresses until the window has what it needs.
const (
	// MetaDir is snug's private directory at the root of every image.
	MetaDir     = ".snug"
	balloonName = "balloon"
)

type balloon struct {
	f      *os.File
	dir    string // mount point
	sysfs  string // /sys/fs/ext4/<dev>
	fsSize int64  // bytes: the logical range the balloon may use (the ceiling)
	quota  int64  // bytes: the balloon never holds less than fsSize - quota
	bsize  int64
}

func balloonPath(dir string) string { return filepath.Join(dir, MetaDir, balloonName) }

// createBalloon makes /.snug and an empty balloon in a fresh filesystem,
// with the quota and the inode count asked for (0: none) recorded on it.
func createBalloon(dir string, quota, inodes int64) error {
	if err := os.Mkdir(filepath.Join(dir, MetaDir), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	f, err := os.OpenFile(balloonPath(dir), os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	err = writeQuota(f, quota)
	if err == nil && inodes > 0 {
		err = unix.Fsetxattr(int(f.Fd()), inodesXattr, []byte(strconv.FormatInt(inodes, 10)), 0)
	}
	return errors.Join(err, f.Close())
}

// openBalloon opens the balloon of the filesystem mounted at dir from
// device (for its sysfs directory).
func openBalloon(dir, device string, fsSize int64) (*balloon, error) {
	f, err := os.OpenFile(balloonPath(dir), os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNotSnugImage)
	}
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: balloon is not a regular file: %w", dir, ErrNotSnugImage)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		f.Close()
		return nil, err
	}
	quota, err := readQuota(f, fsSize)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &balloon{f: f, dir: dir, sysfs: filepath.Join("/sys/fs/ext4", filepath.Base(device)), fsSize: fsSize, quota: quota, bsize: sfs.Bsize}, nil
}

func (b *balloon) Close() error { return b.f.Close() }

// extents returns the balloon's extents, lowest physical address first.
func (b *balloon) extents() ([]extent, error) { return fileExtents(b.f) }

// inflate gives the balloon every free block of the filesystem. ext4 keeps
// what fallocate allocated when it runs out of space, which is what we want;
// a second pass takes blocks freed by a journal commit meanwhile. The
// filesystem is full until release runs: writers racing a reclaim can see
// ENOSPC (reclaim runs when the container is stopped or idle).
//
// ext4 holds back a reserve of up to 4096 clusters (reserved_clusters) from
// ordinary allocations, fallocate included. The reserve is a count, not a
// place, so whatever free blocks the balloon left for it could lie anywhere
// and files would land beyond the window. Inflate lowers it to zero while it
// runs, so the balloon takes every free block, and restores it after: the
// reserve then comes out of the window.
func (b *balloon) inflate() error {
	resv := filepath.Join(b.sysfs, "reserved_clusters")
	if saved, err := os.ReadFile(resv); err == nil {
		if err := os.WriteFile(resv, []byte("0"), 0); err != nil {
			return fmt.Errorf("lower reserved_clusters: %w", err)
		}
		defer os.WriteFile(resv, saved, 0)
	}
	var prev uint64 = ^uint64(0)
	for range 4 {
		var sfs unix.Statfs_t
		if err := unix.Fstatfs(int(b.f.Fd()), &sfs); err != nil {
			return err
		}
		if sfs.Bfree == 0 || sfs.Bfree >= prev {
			return nil
		}
		prev = sfs.Bfree
		// The logical range [0, fsSize) always has more holes than the
		// filesystem has free blocks, and fallocate only fills holes. The
		// file's size must cover the range: ext4 ignores hole punches
		// beyond i_size, so KEEP_SIZE would make the balloon unreleasable.
		if err := b.f.Truncate(b.fsSize); err != nil {
			return fmt.Errorf("size balloon: %w", err)
		}
		err := unix.Fallocate(int(b.f.Fd()), 0, 0, b.fsSize)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("inflate balloon: %w", err)
		}
	}
	return nil
}

// inflateLeaving gives the balloon all free blocks but margin bytes, filling
// the holes of its logical range in order, so a running container keeps
// margin bytes to write into while the balloon is re-inflated.
func (b *balloon) inflateLeaving(margin int64) error {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(b.f.Fd()), &sfs); err != nil {
		return err
	}
	want := int64(sfs.Bavail)*sfs.Bsize - margin
	if want <= 0 {
		return nil
	}
	// ENOSPC: a writer took some of it meanwhile; the balloon keeps what
	// it got, and the margin is still free.
	if _, err := b.inflateBy(want); err != nil && !errors.Is(err, unix.ENOSPC) {
		return err
	}
	return nil
}

// punchHost punches the balloon's extents out of the image file itself. The
// balloon's blocks are unwritten, so ext4 never reads them; blocks it took
// over from deleted files may still hold old data on the host, and this makes
// them holes. Callers hold the image lock and run it before any release, so
// no block punched here can meanwhile belong to a file.
func (b *balloon) punchHost(image *os.File, exts []extent) error {
	for _, e := range exts {
		if err := unix.Fallocate(int(image.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, e.Physical, e.Length); err != nil {
			return fmt.Errorf("punch %s at %d: %w", image.Name(), e.Physical, err)
		}
	}
	return nil
}

// releaseBelow gives back to the filesystem every balloon block whose
// physical address is below limit. It returns the bytes released.
func (b *balloon) releaseBelow(exts []extent, limit int64) (int64, error) {
	var plan []extent
	for _, e := range exts {
		if e.Physical >= limit {
			break
		}
		e.Length = min(e.Length, b.roundUp(limit-e.Physical))
		plan = append(plan, e)
	}
	return b.release(exts, plan)
}

// releaseBytes gives back n bytes of balloon blocks, lowest physical address
// first, so the window grows at its end. It returns the bytes released, which
// is less than n only when the balloon is empty.
func (b *balloon) releaseBytes(exts []extent, n int64) (int64, error) {
	var plan []extent
	for _, e := range exts {
		if n <= 0 {
			break
		}
		e.Length = min(e.Length, b.roundUp(n))
		n -= e.Length
		plan = append(plan, e)
	}
	return b.release(exts, plan)
}

// release punches the planned parts of balloon extents. Each part starts at
// its extent's start (lowest physical address), so ext4 only needs to split
// an extent when a part is shorter than it, and a split may need a new
// extent-tree block. Whole extents go first: they free blocks for the splits.
// On a completely full filesystem (right after inflate) a split can still
// find no block; then the whole extent is released instead, and the window
// ends past the target by less than that extent, unless that would take
// the balloon below its floor. The plan is cut so the balloon keeps its
// floor (the quota): what lies beyond is never released.
func (b *balloon) release(exts, plan []extent) (int64, error) {
	whole := make(map[int64]int64, len(exts))
	for _, e := range exts {
		whole[e.Logical] = e.Length
	}
	floor, err := b.floor()
	if err != nil {
		return 0, err
	}
	spare := sizeOf(exts) - floor
	plan = capPlan(plan, spare)
	var planned int64
	for _, p := range plan {
		planned += p.Length
	}
	sort.SliceStable(plan, func(i, j int) bool {
		return plan[i].Length == whole[plan[i].Logical] && plan[j].Length != whole[plan[j].Logical]
	})
	var done int64
	for _, p := range plan {
		err := b.punch(p.Logical, p.Length)
		if errors.Is(err, unix.ENOSPC) && p.Length < whole[p.Logical] && planned-p.Length+whole[p.Logical] <= spare {
			planned += whole[p.Logical] - p.Length
			p.Length = whole[p.Logical]
			err = b.punch(p.Logical, p.Length)
		}
		if err != nil {
			return done, err
		}
		done += p.Length
	}
	return done, nil
}

// ensureFree releases balloon blocks until statfs shows free bytes available
// to files (the reserve ext4 holds back counts against it), or the balloon is
// down to its floor (the quota is reached). It returns the bytes released.
func (b *balloon) ensureFree(free int64) (int64, error) {
	var done int64
	for range 4 {
		var sfs unix.Statfs_t
		if err := unix.Fstatfs(int(b.f.Fd()), &sfs); err != nil {
			return done, err
		}
		avail := int64(sfs.Bavail) * sfs.Bsize
		if avail >= free {
			break
		}
		exts, err := b.extents()
		if err != nil || len(exts) == 0 {
			return done, err
		}
		n, err := b.releaseBytes(exts, free-avail)
		done += n
		if err != nil || n == 0 {
			return done, err // n == 0: the balloon is at its floor
		}
	}
	return done, nil
}

// capPlan cuts plan to at most spare bytes, in its order.
func capPlan(plan []extent, spare int64) []extent {
	var out []extent
	for _, p := range plan {
		if spare <= 0 {
			break
		}
		p.Length = min(p.Length, spare)
		spare -= p.Length
		out = append(out, p)
	}
	return out
}

func (b *balloon) roundUp(n int64) int64 { return (n + b.bsize - 1) / b.bsize * b.bsize }

func (b *balloon) punch(logical, length int64) error {
	if err := unix.Fallocate(int(b.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, logical, length); err != nil {
		return fmt.Errorf("release balloon at %d+%d: %w", logical, length, err)
	}
	return nil
}

// windowOf is the end of the packing window: the lowest physical address the
// balloon holds, or the filesystem size when the balloon is empty. It is
// derived from the balloon on every call, never stored, so it cannot go stale.
func windowOf(exts []extent, fsSize int64) int64 {
	if len(exts) == 0 {
		return fsSize
	}
	return exts[0].Physical
}

func sizeOf(exts []extent) int64 {
	var n int64
	for _, e := range exts {
		n += e.Length
	}
	return n
}
