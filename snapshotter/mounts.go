package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/imagefs"
)

// Mounts returns the mounts of the active or view snapshot key, again.
// containerd asks for a container's root when it creates its task, before
// the root is mounted: the quota and inode count the container's
// annotations ask for are applied then (applyStartAnnotations).
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var snap storage.Snapshot
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		snap, err = storage.GetSnapshot(ctx, key)
		return err
	}); err != nil {
		return nil, fmt.Errorf("mounts of %s: %w", key, err)
	}
	if reason := s.quarantined(snap.ID); reason != "" {
		return nil, fmt.Errorf("mounts of %s: %w (%s); see snug incidents", key, imagefs.ErrQuarantined, reason)
	}
	if err := s.imagesSound(snap); err != nil {
		return nil, fmt.Errorf("mounts of %s: %w", key, err)
	}
	if snap.Kind == snapshots.KindActive {
		if err := s.applyStartAnnotations(ctx, snap.ID, key, snap.ParentIDs); err != nil {
			return nil, fmt.Errorf("mounts of %s: %w", key, err)
		}
	}
	return s.mounts(snap), nil
}

// ErrImageDeleted is returned for a snapshot whose image file, or a parent
// layer's, was deleted from under snug. A mounted filesystem lives on (its
// loop device holds the file) until it is unmounted, then its data is
// gone: a new mount of it is refused, and the snapshot can only be removed.
var ErrImageDeleted = fmt.Errorf("image file deleted under snug: %w", errdefs.ErrFailedPrecondition)

// imagesSound checks that the image files a snapshot's mounts rely on (its
// own and its parents' layers) still exist, and that the directories the
// mounts name in them are directories, not symlinks out of the image.
func (s *Snapshotter) imagesSound(snap storage.Snapshot) error {
	paths := []string{s.imagePath(snap.ID, snap.Kind)}
	for _, p := range snap.ParentIDs {
		paths = append(paths, s.imagePath(p, snapshots.KindCommitted))
	}
	for _, p := range paths {
		if p == "" {
			continue
		}
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: %s", ErrImageDeleted, p)
		}
	}
	dirs := []string{}
	if snap.Kind == snapshots.KindActive {
		dirs = append(dirs, s.upperPath(snap.ID), s.workPath(snap.ID))
	}
	for _, p := range snap.ParentIDs {
		dirs = append(dirs, s.layerPath(p))
	}
	for _, d := range dirs {
		if err := requireDir(d); err != nil {
			return err
		}
	}
	return nil
}

// mounts is what containerd and runc mount for a snapshot. The images are
// mounted already (by snug, once); these mounts only combine their
// directories, the way containerd's overlayfs snapshotter does:
//   - active without parent: a bind mount of the upper dir in its rw image;
//     for a layer's unpack, an overlay over an empty lower dir, so that an
//     applier writes the layer's whiteouts as overlayfs's even when
//     containerd unpacks layers side by side and gives each its parent only
//     at Commit (the "rebase" capability);
//   - active with parents: overlay with the parents' layers as lowerdir and
//     upper and work dirs in the snapshot's own rw image;
//   - view: a read-only bind of its one parent's layer (or of an empty
//     directory), or a read-only overlay of several.
func (s *Snapshotter) mounts(snap storage.Snapshot) []mount.Mount {
	active := snap.Kind == snapshots.KindActive
	var (
		dirs   string // where the upper and work dirs are (one stat)
		unpack bool
	)
	if active {
		dirs, unpack = s.overlayDirs(snap.ID)
	}
	var lowers []string
	switch {
	case len(snap.ParentIDs) == 0 && unpack:
		lowers = []string{filepath.Join(dirs, emptyDir)}
	case len(snap.ParentIDs) == 0 && active:
		return []mount.Mount{{Type: "bind", Source: filepath.Join(dirs, upperDir), Options: []string{"rw", "rbind"}}}
	case len(snap.ParentIDs) == 0:
		return []mount.Mount{{Type: "bind", Source: filepath.Join(s.snapshotDir(snap.ID), emptyDir), Options: []string{"ro", "rbind"}}}
	case !active && len(snap.ParentIDs) == 1:
		return []mount.Mount{{Type: "bind", Source: s.layerPath(snap.ParentIDs[0]), Options: []string{"ro", "rbind"}}}
	}
	var options []string
	if active {
		options = append(options,
			"workdir="+filepath.Join(dirs, workDir),
			"upperdir="+filepath.Join(dirs, upperDir))
	}
	for _, p := range snap.ParentIDs {
		lowers = append(lowers, s.layerPath(p))
	}
	options = append(options, "lowerdir="+strings.Join(lowers, ":"))
	options = append(options, overlayOptions...)
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}
}

// overlayOptions are added to every overlay mount. index=off, as containerd's
// overlayfs snapshotter sets it: the layers are shared by many overlays, and
// an index would tie each layer to the first overlay that used it.
var overlayOptions = func() []string {
	if _, err := os.Stat("/sys/module/overlay/parameters/index"); err == nil {
		return []string{"index=off"}
	}
	return nil
}()
