package snapshotter

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

// The OCI annotations that set a container's quota when it starts, for
// Kubernetes, whose CRI passes no snapshot labels: AnnotationMaxSize is
// LabelMaxSize's name and form (bytes), as containerd PR 14070 passes it,
// so pods keep working if containerd adopts it; AnnotationQuota is snug's
// own and takes a size with a unit ("512MiB"). AnnotationQuota wins when
// both are set.
const (
	AnnotationMaxSize = LabelMaxSize
	AnnotationQuota   = "io.snugfs.quota"
)

// annotatedQuota is the quota a container's annotations ask for, if any.
// A value snug cannot honour is an invalid argument naming the annotation.
func annotatedQuota(annotations map[string]string) (quota int64, key string, ok bool, err error) {
	if v, found := annotations[AnnotationQuota]; found {
		size, err := config.ParseSize(v)
		if err != nil {
			return 0, AnnotationQuota, true, fmt.Errorf("annotation %s=%q: %w: %w", AnnotationQuota, truncate(v, 80), err, errdefs.ErrInvalidArgument)
		}
		if q := size.Bytes(); q < imagefs.MinQuota || q > MaxQuota {
			return 0, AnnotationQuota, true, fmt.Errorf("annotation %s=%q: must be between 32MiB and 16TiB: %w", AnnotationQuota, truncate(v, 80), errdefs.ErrInvalidArgument)
		}
		return size.Bytes(), AnnotationQuota, true, nil
	}
	if v, found := annotations[AnnotationMaxSize]; found {
		q, err := parseMaxSize(v)
		if err != nil {
			return 0, AnnotationMaxSize, true, fmt.Errorf("annotation: %w", err)
		}
		return q, AnnotationMaxSize, true, nil
	}
	return 0, "", false, nil
}

// applyAnnotatedQuota sets the quota a starting container's annotations
// ask for, before its process runs. An image that has it already is left
// alone, so a restart changes nothing.
func (s *Snapshotter) applyAnnotatedQuota(ctx context.Context, st *imageState, annotations map[string]string) error {
	quota, key, ok, err := annotatedQuota(annotations)
	if err != nil || !ok {
		return err
	}
	if have, err := st.m.Quota(); err != nil {
		return fmt.Errorf("snapshot %s: %w", st.id, err)
	} else if have == imagefs.RoundQuota(quota) {
		return nil
	}
	if _, err := s.SetQuota(ctx, st.id, quota); err != nil {
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
	if err != nil { // a refusal (below usage, above the ceiling) is an invalid argument
		return out, err
	}
	log.G(ctx).WithFields(log.Fields{
		"snapshot": id, "quota": config.FormatBytes(out.QuotaAfter), "was": config.FormatBytes(out.QuotaBefore),
		"ceiling": config.FormatBytes(out.CeilingBytes), "used": config.FormatBytes(out.UsedBytes),
	}).Info("quota changed")
	return out, nil
}
