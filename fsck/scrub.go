package fsck

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/errclass"
)

// CheckResult is the outcome of an on-demand online check (api.CheckResult).
type CheckResult = api.CheckResult

// ErrIncidentOpen is returned by Check for an image an incident is
// working on.
var ErrIncidentOpen = errclass.New("an incident is open on this image", errdefs.ErrFailedPrecondition)

// Check runs the online check of snapshot id's mounted image now (frozen
// for the check, or for a reflink clone). A damaged image opens an
// incident (source "check") that the pipeline takes on.
func (d *Doctor) Check(ctx context.Context, id string) (CheckResult, error) {
	out := CheckResult{Snapshot: id}
	d.mu.Lock()
	inc, busy := d.active[id]
	d.mu.Unlock()
	if busy {
		return out, fmt.Errorf("check %s: %w (%s)", id, ErrIncidentOpen, inc.ID)
	}
	m, _, ok := d.images.MountedImage(id)
	if !ok {
		return out, fmt.Errorf("check %s: %w", id, imagefs.ErrNotMounted)
	}
	res, err := d.scrub(ctx, m, d.pol())
	out.Result = res
	if err != nil {
		return out, fmt.Errorf("check %s: %w", id, err)
	}
	if res.Uncorrected() {
		at := time.Now()
		d.report(Report{Key: id, At: at, Source: "check", Event: Event{Count: 1}})
		d.mu.Lock()
		if inc, ok := d.active[id]; ok {
			out.Incident = inc.ID
		}
		d.mu.Unlock()
	}
	return out, nil
}

// scrub checks an image online within the policy's timeout.
func (d *Doctor) scrub(ctx context.Context, m *imagefs.Mounted, pol config.FsckPolicy) (imagefs.ScrubResult, error) {
	cctx, cancel := context.WithTimeout(ctx, pol.Timeout)
	defer cancel()
	return d.tools.scrub(cctx, m, pol.CheckMethod)
}

// scrubEvery checks every watched image online, one at a time, each
// policy scrub_interval.
func (d *Doctor) scrubEvery(ctx context.Context) {
	for {
		iv := d.pol().ScrubInterval
		if iv <= 0 {
			iv = time.Hour // turned off by a reload: look again later
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(iv):
		}
		if d.pol().ScrubInterval <= 0 {
			continue
		}
		for _, id := range d.mon.Watched() {
			res, err := d.Check(ctx, id)
			entry := log.G(ctx).WithField("snapshot", id)
			switch {
			case errors.Is(err, ErrIncidentOpen):
			case err != nil:
				entry.WithError(err).Warn("scheduled check")
			case res.Incident != "":
				entry.WithField("incident", res.Incident).Error("scheduled check found damage")
			default:
				entry.WithField("frozen", res.Result.Frozen).Debug("scheduled check: clean")
			}
		}
	}
}
