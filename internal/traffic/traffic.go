// Package traffic records when the daemon's foreground work last happened
// (snapshots prepared, committed, removed; containers started, stopped), so
// that background work waits for a lull instead of competing with a burst.
package traffic

import (
	"context"
	"sync/atomic"
	"time"
)

// Meter records when snapshots were last prepared, committed or removed,
// and containers last started or stopped on them, so that background work
// (a reclaim on stop, a pool refill) waits for a lull instead of competing
// with a burst of container starts and removals for the CPUs and the disk. With `ctr run --rm` under such a burst, the
// lull also comes after the removal, and the reclaim of a removed image is
// skipped instead of done for nothing.
type Meter struct {
	last atomic.Int64 // unix nanoseconds of the latest mark
}

// Mark records a snapshot operation now.
func (t *Meter) Mark() { t.last.Store(time.Now().UnixNano()) }

// WaitLull waits until nothing was marked for quiet, or for at most limit,
// so that a steady stream of operations delays background work without
// starving it. It returns false if ctx ended first.
func (t *Meter) WaitLull(ctx context.Context, quiet, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		idle := time.Since(time.Unix(0, t.last.Load()))
		left := time.Until(deadline)
		if idle >= quiet || left <= 0 {
			return ctx.Err() == nil
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(min(quiet-idle, left)):
		}
	}
}
