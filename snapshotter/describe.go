package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/marker"
)

// Describe describes the image of every active and committed snapshot, in
// snapshot id order, as the kernel and the files show it: where it is
// mounted, its stats, and what keeps it out of service. Views and layers
// being unpacked have no image and are left out. What the daemon did to each image (api.Activity) is
// the images.Manager's to add (its Status).
func (s *Snapshotter) Describe(ctx context.Context) ([]api.ImageStatus, error) {
	var out []api.ImageStatus
	if err := s.walkIDs(ctx, func(info snapshots.Info, id string) {
		if info.Kind != snapshots.KindView && s.imagePath(id, info.Kind) != "" {
			out = append(out, api.ImageStatus{Snapshot: info.Name, Kind: strings.ToLower(info.Kind.String()), ID: id})
		}
	}); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	// One read of the mount table for all images, not one per image.
	tbl, err := imagefs.ReadMountsBelow(filepath.Join(s.root, "snapshots"))
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	for i := range out {
		st := &out[i]
		kind := snapshots.ParseKind(st.Kind)
		image := s.imagePath(st.ID, kind)
		m, ok := tbl.MountedAt(image, s.mountPath(st.ID))
		if !ok {
			st.Stats.Path = image
			st.Problem = "not mounted"
			if reason := s.quarantined(st.ID); reason != "" {
				st.Problem = "quarantined: " + reason
			}
			continue
		}
		if kind == snapshots.KindCommitted {
			st.Damaged = marker.Read(filepath.Join(s.snapshotDir(st.ID), damagedFile))
		}
		if _, err := os.Lstat(image); errors.Is(err, os.ErrNotExist) {
			st.Stats.Path = image
			st.Problem = fmt.Sprintf("%v (mounted on %s, its data goes when it is unmounted): remove the snapshot", ErrImageDeleted, m.Device)
			continue
		}
		stats, err := m.Stat()
		st.Stats = stats
		if err != nil {
			st.Problem = err.Error()
		}
	}
	return out, nil
}
