package images

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

// Why a reclaim runs.
const (
	reasonStop   = "stop"
	reasonIdle   = "idle"
	reasonManual = "manual"
)

// StopDelay is how long after a container stops its reclaim starts. A
// container run with --rm is removed within this time, and its image
// deleted whole, with no repack to wait for.
const StopDelay = 500 * time.Millisecond

// A scheduled reclaim then waits for a lull in the snapshot operations
// (traffic): ReclaimLull without a Prepare, Commit, Remove or container
// start or stop, at most reclaimLullMax. Under a burst of `ctr run --rm`
// the removal comes later than stopDelay, and every stopped container's
// image was repacked just before its deletion (50 reclaims for 50
// containers, measured), competing with the burst; waiting for the lull
// lets the removal come first.
const (
	ReclaimLull    = 250 * time.Millisecond
	reclaimLullMax = 5 * time.Second
)

// packedSlack is how much more than its headroom a stopped image's window
// may have free and still count as packed (imagefs.Mounted.Packed): what
// its first EnsureFree and ext4's own metadata leave.
const packedSlack = 32 << 20

// scheduleReclaim reclaims st after delay and a lull in the snapshot
// operations, off the caller's path, unless a reclaim is scheduled already
// or the image is removed meanwhile.
func (g *Manager) scheduleReclaim(st *imageState, reason string, delay time.Duration) {
	st.mu.Lock()
	if st.queued || st.removed {
		st.mu.Unlock()
		return
	}
	st.queued = true
	st.mu.Unlock()
	g.bg.Add(1)
	go func() {
		defer g.bg.Done()
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-g.bgCtx.Done():
			return
		case <-t.C:
		}
		if !g.traffic.WaitLull(g.bgCtx, ReclaimLull, reclaimLullMax) {
			return
		}
		// Bound concurrent repacks: each one syncs and trims a filesystem.
		select {
		case <-g.bgCtx.Done():
			return
		case g.reclaimSlots <- struct{}{}:
		}
		defer func() { <-g.reclaimSlots }()
		st.mu.Lock()
		st.queued = false
		st.mu.Unlock()
		if _, err := g.reclaim(g.bgCtx, st, reason); err != nil && !errdefs.IsNotFound(err) {
			log.G(g.bgCtx).WithError(err).WithField("snapshot", st.id).WithField("reason", reason).Warn("reclaim failed")
		}
	}()
}

// ReclaimOutcome is the outcome of one reclaim (api.ReclaimOutcome).
type ReclaimOutcome = api.ReclaimOutcome

// reclaim trims and repacks one image now, waiting for a reclaim running on
// it. A stopped container's image is packed tight; a running (or possibly
// running) one keeps a margin of one headroom free, so it never sees ENOSPC
// meanwhile. A reclaim at a stop is skipped when the image is packed
// already (imagefs.Mounted.Packed), an idle reclaim when it would give back
// less than the policy's minimum gain.
func (g *Manager) reclaim(ctx context.Context, st *imageState, reason string) (ReclaimOutcome, error) {
	out := ReclaimOutcome{ID: st.id, Reason: reason}
	st.op.Lock()
	defer st.op.Unlock()
	st.mu.Lock()
	removed, running, stopped := st.removed, st.running, !st.running && !st.startedAt.IsZero()
	st.mu.Unlock()
	if removed {
		return out, fmt.Errorf("snapshot %s: %w", st.id, errdefs.ErrNotFound)
	}
	cl := g.classOf(ctx, st)
	if reason == reasonStop && stopped {
		packed, stats, err := st.m.Packed(int64(cl.Window.Headroom) + packedSlack)
		if err != nil {
			return out, err
		}
		if packed {
			out.Skipped = fmt.Sprintf("already packed: %s on the host for %s used, %s free", config.FormatBytes(stats.FootprintBytes), config.FormatBytes(stats.UsedBytes), config.FormatBytes(stats.FreeBytes))
			log.G(ctx).WithField("snapshot", st.id).Debug(out.Skipped)
			st.counts.packed()
			g.totals.packed()
			return out, nil
		}
	}
	if reason == reasonIdle {
		stats, err := st.m.Stat()
		if err != nil {
			return out, err
		}
		if gain := stats.FootprintBytes - stats.UsedBytes; gain < int64(cl.Reclaim.MinGain) {
			out.Skipped = fmt.Sprintf("would give back at most %s, less than reclaim.min_gain", config.FormatBytes(gain))
			return out, nil
		}
	}
	o := imagefs.ReclaimOptions{Headroom: int64(cl.Window.Headroom)}
	if running || !stopped {
		o.Margin = int64(cl.Window.Headroom)
	}
	var res imagefs.ReclaimResult
	err := g.watcher.Repack(st.id, func() (err error) {
		res, err = st.m.Reclaim(ctx, o)
		return err
	})
	out.ReclaimResult = res
	if err != nil {
		return out, err
	}
	gain := max(res.Gain(), 0)
	st.mu.Lock()
	st.lastReclaim = time.Now()
	st.mu.Unlock()
	st.counts.reclaimed(gain)
	g.totals.reclaimed(gain)
	log.G(ctx).WithFields(log.Fields{
		"snapshot": st.id, "reason": reason, "gain": config.FormatBytes(gain),
		"footprint": config.FormatBytes(res.FootprintAfter), "window": config.FormatBytes(res.WindowAfter),
		"margin": config.FormatBytes(o.Margin), "duration": res.Duration,
	}).Info("reclaimed")
	return out, nil
}

// Reclaim repacks the image of the snapshot named key now (`snug reclaim`),
// or of every active snapshot when key is empty.
func (g *Manager) Reclaim(ctx context.Context, key string) ([]ReclaimOutcome, error) {
	var targets []*imageState
	if key == "" {
		targets = g.allImages()
	} else {
		id, err := g.snaps.SnapshotID(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("reclaim %s: %w", key, err)
		}
		st := g.image(id)
		if st == nil {
			return nil, fmt.Errorf("reclaim %s: not an active snapshot with a mounted image: %w", key, errdefs.ErrFailedPrecondition)
		}
		targets = append(targets, st)
	}
	names, err := g.snaps.Names(ctx)
	if err != nil {
		return nil, err
	}
	var out []ReclaimOutcome
	for _, st := range targets {
		o, err := g.reclaim(ctx, st, reasonManual)
		o.Snapshot = names[st.id]
		if err != nil {
			return out, fmt.Errorf("reclaim %s: %w", o.Snapshot, err)
		}
		out = append(out, o)
	}
	return out, nil
}
