package images

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/imagefs"
)

// imageState is what the daemon knows about one mounted rw image beyond
// what the kernel shows: its policy class, its container, and what was done
// to it. Counters are cumulative since the daemon started.
type imageState struct {
	id  string
	dir string // the snapshot's directory: its class file
	m   *imagefs.Mounted

	// op is held while the image is repacked or its quota changes;
	// Unmounting takes it, so an image is never unmounted under either.
	op sync.Mutex

	mu          sync.Mutex // protects the fields below
	class       string
	container   string // the container last seen starting on it
	running     bool
	startedAt   time.Time
	lastGrow    time.Time
	lastReclaim time.Time
	queued      bool // a reclaim is scheduled
	removed     bool

	// annotated: the annotations of the container on this image were
	// applied (see Annotated).
	annotated atomic.Bool

	counts counters
}

// Totals count what the daemon did to all images since it started,
// including images removed since.
type Totals = api.WindowCounts

// counters are an image's window counts, or the daemon's totals, updated
// as the watcher and the reclaims report.
type counters struct {
	grows, growBytes, reclaims, reclaimedBytes, trimmedBytes, windowFull, skipped, flushesDropped atomic.Int64
}

func (c *counters) grew(n int64)      { c.grows.Add(1); c.growBytes.Add(n) }
func (c *counters) reclaimed(n int64) { c.reclaims.Add(1); c.reclaimedBytes.Add(n) }
func (c *counters) trimmed(n int64)   { c.trimmedBytes.Add(n) }
func (c *counters) full()             { c.windowFull.Add(1) }
func (c *counters) packed()           { c.skipped.Add(1) }
func (c *counters) droppedFlushes()   { c.flushesDropped.Add(1) }

func (c *counters) load() api.WindowCounts {
	return api.WindowCounts{
		Grows: c.grows.Load(), GrowBytes: c.growBytes.Load(),
		Reclaims: c.reclaims.Load(), ReclaimedBytes: c.reclaimedBytes.Load(),
		TrimmedBytes: c.trimmedBytes.Load(), WindowFull: c.windowFull.Load(),
		ReclaimsSkipped: c.skipped.Load(), FlushesDropped: c.flushesDropped.Load(),
	}
}

// Activity is what the daemon did to an rw image (api.Activity).
type Activity = api.Activity

func (st *imageState) activity() Activity {
	st.mu.Lock()
	a := Activity{Class: st.class, Container: st.container}
	switch {
	case st.running:
		a.State = "running"
	case !st.startedAt.IsZero():
		a.State = "stopped"
	}
	if !st.lastGrow.IsZero() {
		t := st.lastGrow
		a.LastGrow = &t
	}
	if !st.lastReclaim.IsZero() {
		t := st.lastReclaim
		a.LastReclaim = &t
	}
	st.mu.Unlock()
	a.WindowCounts = st.counts.load()
	return a
}
