package imagefs

import (
	"time"
)

// Policy is the packing allocator policy for one mounted image: how much
// free space its window keeps ahead of the data, and when freed space goes
// back to the host while it runs.
type Policy struct {
	// Headroom is the least free space kept in the window.
	Headroom int64
	// HeadroomRatio raises the headroom to this fraction of the used space.
	HeadroomRatio float64
	// Burst raises the headroom to what the fastest recent writer can
	// reserve in this long. ext4 reserves space at write() time (delayed
	// allocation), at page-cache speed until the dirty-page limits throttle
	// the writer, so the window must stay ahead of the write rate, not of the
	// disk: Burst covers the watcher noticing (one interval) and the grow
	// landing (well under a millisecond), with a margin.
	Burst time.Duration
	// TrimAfter trims a running image once its file's footprint beyond the
	// used space grew by this many bytes since the last trim (0: never
	// while it runs): blocks freed inside but still allocated on the host.
	// Freed blocks become holes in the image file, so the host footprint
	// follows deletions.
	TrimAfter int64
	// IdleAfter reports an image idle once its used space and inode count
	// have not changed for this long (0: never).
	IdleAfter time.Duration
}

// headroomFor is the free space to keep for an image that uses used bytes
// and whose free space fell at up to rate bytes per second lately.
func (p Policy) headroomFor(used int64, rate float64) int64 {
	h := max(p.Headroom, int64(float64(used)*p.HeadroomRatio))
	return max(h, int64(rate*p.Burst.Seconds()))
}

// growSlack is how far below its headroom an image's free space may fall
// before the watcher grows the window, back to the whole headroom: 1/16 of
// it, at most 1 MiB. Without it every write grew the window by what it
// took: a container's start (runc's mount points, a few KiB) cost one to
// three grows of 4-16 KiB, each a lock of the image, a FIEMAP of the
// balloon and a journal transaction in the image.
func growSlack(headroom int64) int64 { return min(headroom/16, 1<<20) }
