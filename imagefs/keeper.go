package imagefs

import (
	"context"
	"time"

	"golang.org/x/sys/unix"
)

// Policy is the packing allocator policy: how much free space the window
// keeps ahead of the data, and how often that is checked.
type Policy struct {
	// Headroom is the least free space kept in the window.
	Headroom int64
	// HeadroomRatio raises the headroom to this fraction of the used space.
	HeadroomRatio float64
	// Interval is how often the free space is checked.
	Interval time.Duration
}

// headroomFor is the free space to keep for an image that uses used bytes
// and whose free space fell by rate bytes per second since the last check.
// A writer at page-cache speed reserves space at write() time (ext4 delayed
// allocation), so the window must stay ahead of what it can reserve in two
// check intervals: one to notice, one for the grow to land.
func (p Policy) headroomFor(used int64, rate float64) int64 {
	h := max(p.Headroom, int64(float64(used)*p.HeadroomRatio))
	return max(h, int64(2*rate*p.Interval.Seconds()))
}

// Keep grows the window of m whenever its free space falls below the
// policy's headroom, until ctx ends or the quota is reached. Each check is one
// statfs; a grow punches balloon extents (a few fallocate calls). onGrow,
// if set, is told how many bytes each grow added.
func Keep(ctx context.Context, m *Mounted, p Policy, onGrow func(int64)) error {
	t := time.NewTicker(p.Interval)
	defer t.Stop()
	var lastFree int64 = -1
	last := time.Now()
	var rate float64
	for {
		var sfs unix.Statfs_t
		if err := unix.Statfs(m.Dir, &sfs); err != nil {
			return err
		}
		free := int64(sfs.Bavail) * sfs.Bsize
		now := time.Now()
		if lastFree >= 0 && free < lastFree {
			r := float64(lastFree-free) / now.Sub(last).Seconds()
			rate = max(r, rate*0.5) // follow bursts at once, forget them slowly
		} else {
			rate *= 0.5
		}
		used := int64(sfs.Blocks-sfs.Bfree) * sfs.Bsize
		if want := p.headroomFor(used, rate); free < want {
			grown, err := m.EnsureFree(ctx, want)
			if err != nil {
				return err
			}
			if grown > 0 && onGrow != nil {
				onGrow(grown)
			}
			free += grown
		}
		lastFree, last = free, now
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
