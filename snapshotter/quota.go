package snapshotter

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

// QuotaOutcome is what a quota change did.
type QuotaOutcome struct {
	Snapshot string `json:"snapshot,omitempty"`
	ID       string `json:"id"`
	imagefs.QuotaChange
}

// SetQuota changes the quota of snapshot id's mounted rw image while its
// container runs (`snug resize`). A quota above the image's ceiling, or
// below what it stores, is refused as an invalid argument and changes
// nothing. Raised, the window grows into the new room at once, by the
// policy's headroom.
func (s *Snapshotter) SetQuota(ctx context.Context, id string, quota int64) (QuotaOutcome, error) {
	out := QuotaOutcome{ID: id}
	st := s.image(id)
	if st == nil {
		if _, layer, ok := s.MountedImage(id); ok && layer {
			return out, fmt.Errorf("snapshot %s is a read-only layer: it has no quota: %w", id, errdefs.ErrInvalidArgument)
		}
		return out, fmt.Errorf("snapshot %s has no mounted rw image: %w", id, errdefs.ErrNotFound)
	}
	st.op.Lock()
	defer st.op.Unlock()
	st.mu.Lock()
	removed := st.removed
	st.mu.Unlock()
	if removed {
		return out, fmt.Errorf("snapshot %s: %w", id, errdefs.ErrNotFound)
	}
	err := s.watcher.Repack(st.id, func() (err error) {
		out.QuotaChange, err = st.m.SetQuota(ctx, quota)
		if err != nil || out.QuotaAfter <= out.QuotaBefore {
			return err
		}
		_, err = st.m.EnsureFree(ctx, int64(s.classOf(ctx, st).Window.Headroom))
		return err
	})
	if errors.Is(err, imagefs.ErrQuotaBelowUsage) || errors.Is(err, imagefs.ErrQuotaAboveCeiling) || errors.Is(err, imagefs.ErrQuotaTooSmall) {
		return out, fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	if err != nil {
		return out, err
	}
	log.G(ctx).WithFields(log.Fields{
		"snapshot": id, "quota": config.FormatBytes(out.QuotaAfter), "was": config.FormatBytes(out.QuotaBefore),
		"ceiling": config.FormatBytes(out.CeilingBytes), "used": config.FormatBytes(out.UsedBytes),
	}).Info("quota changed")
	return out, nil
}
