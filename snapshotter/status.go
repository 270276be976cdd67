package snapshotter

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"

	"github.com/snugfs/snug/imagefs"
)

// ImageStatus is one snapshot's image as `snug status` shows it.
type ImageStatus struct {
	// Snapshot is the snapshot's key or name in snug's store (containerd
	// prefixes it with the namespace and its own id).
	Snapshot string `json:"snapshot"`
	// Kind is "active" (a thin writable image) or "committed" (a layer).
	Kind string `json:"kind"`
	ID   string `json:"id"`
	imagefs.Stats
	// Problem says why the image could not be measured, if it could not.
	Problem string `json:"problem,omitempty"`
}

// Status describes the image of every active and committed snapshot, in
// snapshot id order. Views have no image and are left out.
func (s *Snapshotter) Status(ctx context.Context) ([]ImageStatus, error) {
	var out []ImageStatus
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		err := storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if info.Kind == snapshots.KindView {
				return nil
			}
			id, _, _, err := storage.GetInfo(ctx, info.Name)
			if err != nil {
				return err
			}
			out = append(out, ImageStatus{Snapshot: info.Name, Kind: strings.ToLower(info.Kind.String()), ID: id})
			return nil
		})
		if errdefs.IsNotFound(err) {
			return nil
		}
		return err
	}); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	// One read of the mount table for all images, not one per image.
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Join(s.root, "snapshots")))
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	devices := map[string]string{}
	for _, mi := range mounts {
		devices[mi.Mountpoint] = mi.Source
	}
	for i := range out {
		st := &out[i]
		kind := snapshots.ParseKind(st.Kind)
		image := s.imagePath(st.ID, kind)
		mnt, _ := filepath.EvalSymlinks(s.mountPath(st.ID))
		dev, ok := devices[mnt]
		if !ok {
			st.Stats.Path = image
			st.Problem = "not mounted"
			continue
		}
		m := &imagefs.Mounted{Image: image, Device: dev, Dir: mnt, ReadOnly: kind == snapshots.KindCommitted}
		stats, err := m.Stat()
		st.Stats = stats
		if err != nil {
			st.Problem = err.Error()
		}
	}
	return out, nil
}
