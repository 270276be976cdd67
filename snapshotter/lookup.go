package snapshotter

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/imagefs"
)

// ContainerdKey returns the containerd namespace and key of snapshot id.
// containerd's metadata store names a snapshot "<namespace>/<n>/<key>" to
// the snapshotter, and a container records <key> in that namespace, so the
// pair finds the containers on an image without asking containerd for each
// container's mounts. ok is false for a snapshot named otherwise (made by
// a client of snug's own socket, or in-process).
func (s *Snapshotter) ContainerdKey(ctx context.Context, id string) (namespace, key string, ok bool, err error) {
	var name string
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		ids, err := storage.IDMap(ctx)
		name = ids[id]
		return err
	})
	if err != nil {
		return "", "", false, fmt.Errorf("snapshot %s: %w", id, err)
	}
	namespace, key, ok = splitContainerdKey(name)
	return namespace, key, ok, nil
}

// splitContainerdKey splits containerd's "<namespace>/<n>/<key>".
func splitContainerdKey(name string) (namespace, key string, ok bool) {
	parts := strings.SplitN(name, "/", 3)
	if len(parts) != 3 || parts[0] == "" || parts[2] == "" || !isNumericID(parts[1]) {
		return "", "", false
	}
	return parts[0], parts[2], true
}

// SnapshotOfMounts finds the snapshot that containerd's mounts for a
// container refer to (an overlay's upperdir or a bind mount's source).
func (s *Snapshotter) SnapshotOfMounts(mounts []mount.Mount) string {
	for _, m := range mounts {
		for _, o := range m.Options {
			if up, ok := strings.CutPrefix(o, "upperdir="); ok {
				return s.SnapshotOfUpper(up)
			}
		}
		if m.Type == "bind" {
			return s.SnapshotOfUpper(m.Source)
		}
	}
	return ""
}

// SnapshotOfUpper maps root/snapshots/<id>/mnt/upper, the overlay upper
// dir in an rw image, to id; "" for any other directory.
func (s *Snapshotter) SnapshotOfUpper(upper string) string {
	rel, err := filepath.Rel(filepath.Join(s.root, "snapshots"), filepath.Clean(upper))
	if err != nil {
		return ""
	}
	parts := strings.Split(rel, string(filepath.Separator))
	if len(parts) == 3 && isNumericID(parts[0]) && parts[1] == mountDir && parts[2] == upperDir {
		return parts[0]
	}
	return ""
}

// LayersOfMounts lists the snapshots whose layers containerd's mounts for a
// container stack (an overlay's lowerdir, or a read-only bind of a layer).
func (s *Snapshotter) LayersOfMounts(mounts []mount.Mount) []string {
	var ids []string
	for _, m := range mounts {
		for _, o := range m.Options {
			if lower, ok := strings.CutPrefix(o, "lowerdir="); ok {
				for _, dir := range strings.Split(lower, ":") {
					if id := s.snapshotOfLayer(dir); id != "" {
						ids = append(ids, id)
					}
				}
			}
		}
		if m.Type == "bind" {
			if id := s.snapshotOfLayer(m.Source); id != "" {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// snapshotOfLayer maps root/snapshots/<id>/mnt/<layer dir> to id.
func (s *Snapshotter) snapshotOfLayer(dir string) string {
	rel, err := filepath.Rel(filepath.Join(s.root, "snapshots"), filepath.Clean(dir))
	if err != nil {
		return ""
	}
	parts := strings.Split(rel, string(filepath.Separator))
	if len(parts) == 3 && isNumericID(parts[0]) && parts[1] == mountDir && parts[2] == imagefs.LayerDir {
		return parts[0]
	}
	return ""
}

// SnapshotID is the id of the snapshot named key in snug's store.
func (s *Snapshotter) SnapshotID(ctx context.Context, key string) (string, error) {
	return s.idOf(ctx, key)
}

// idOf is the id of the snapshot named key.
func (s *Snapshotter) idOf(ctx context.Context, key string) (id string, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		id, _, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return id, err
}

// Names maps the id of every snapshot to its name.
func (s *Snapshotter) Names(ctx context.Context) (map[string]string, error) {
	names := map[string]string{}
	err := s.walkIDs(ctx, func(info snapshots.Info, id string) { names[id] = info.Name })
	return names, err
}

// walkIDs calls fn for every snapshot with its id, in one read
// transaction. A store with no snapshot yet is not an error.
func (s *Snapshotter) walkIDs(ctx context.Context, fn func(info snapshots.Info, id string)) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		err := storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			id, _, _, err := storage.GetInfo(ctx, info.Name)
			if err == nil {
				fn(info, id)
			}
			return err
		})
		if errdefs.IsNotFound(err) { // a new store has no bucket yet
			return nil
		}
		return err
	})
}
