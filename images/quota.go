package images

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

// ApplyAnnotatedQuota sets the quota that the annotations of the container
// on rw image id ask for (config.AnnotatedQuota), before its process runs.
// An image that has it already is left alone, so a restart changes
// nothing; an image not in service is not an error.
func (g *Manager) ApplyAnnotatedQuota(ctx context.Context, id string, annotations map[string]string) error {
	st := g.image(id)
	if st == nil {
		return nil
	}
	return g.applyAnnotatedQuota(ctx, st, annotations)
}

func (g *Manager) applyAnnotatedQuota(ctx context.Context, st *imageState, annotations map[string]string) error {
	quota, key, ok, err := config.AnnotatedQuota(annotations)
	if err != nil || !ok {
		return err
	}
	if have, err := st.m.Quota(); err != nil {
		return fmt.Errorf("snapshot %s: %w", st.id, err)
	} else if have == imagefs.RoundQuota(quota) {
		return nil
	}
	if _, err := g.SetQuota(ctx, st.id, quota); err != nil {
		return fmt.Errorf("annotation %s: %w", key, err)
	}
	return nil
}

// QuotaOutcome says what a quota change did (api.QuotaOutcome).
type QuotaOutcome = api.QuotaOutcome

// SetQuota changes the quota of snapshot id's mounted rw image while its
// container runs (`snug resize`). A quota above the image's ceiling, or
// below what it stores, is refused as an invalid argument and changes
// nothing. Raised, the window grows into the new room at once, by the
// policy's headroom.
func (g *Manager) SetQuota(ctx context.Context, id string, quota int64) (QuotaOutcome, error) {
	out := QuotaOutcome{ID: id}
	st := g.image(id)
	if st == nil {
		if _, layer, ok := g.Mounted(id); ok && layer {
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
	err := g.watcher.Repack(st.id, func() (err error) {
		out.QuotaChange, err = st.m.SetQuota(ctx, quota)
		if err != nil || out.QuotaAfter <= out.QuotaBefore {
			return err
		}
		_, err = st.m.EnsureFree(ctx, int64(g.classOf(ctx, st).Window.Headroom))
		return err
	})
	if err != nil { // a refusal (below usage, above the ceiling) is an invalid argument
		return out, err
	}
	log.G(ctx).WithFields(log.Fields{
		"snapshot": id, "quota": config.FormatBytes(out.QuotaAfter), "was": config.FormatBytes(out.QuotaBefore),
		"ceiling": config.FormatBytes(out.CeilingBytes), "used": config.FormatBytes(out.UsedBytes),
	}).Info("quota changed")
	return out, nil
}
