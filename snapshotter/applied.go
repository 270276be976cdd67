package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/imagefs"
)

// LayerTarget tells snug's differ where to write the layer it applies onto
// mounts: the path of an image in the snapshot's directory, which the
// snapshot's Commit takes as its layer (the unpacked layer is written once,
// straight from its tar; the unpack's dirs stay empty). It answers
// errdefs.ErrNotImplemented, for the differ to apply the usual way, unless
// mounts are those of an active snapshot of this snapshotter that the
// unpacker prepared for a layer (containerd's snapshot.ref label), whose
// upper dir is still empty and which has no layer applied yet.
func (s *Snapshotter) LayerTarget(ctx context.Context, mounts []mount.Mount) (string, error) {
	upper := upperOf(mounts)
	id, ok := s.snapshotOfUpper(upper)
	if !ok {
		return "", fmt.Errorf("mounts %v are not an active snug snapshot's: %w", mounts, errdefs.ErrNotImplemented)
	}
	dir := s.snapshotDir(id)
	if _, err := os.Lstat(filepath.Join(dir, extraction)); err != nil {
		return "", fmt.Errorf("snapshot %s is not a layer's extraction: %w", id, errdefs.ErrNotImplemented)
	}
	target := filepath.Join(dir, applied)
	if _, err := os.Lstat(target); err == nil {
		return "", fmt.Errorf("snapshot %s has a layer applied already: %w", id, errdefs.ErrNotImplemented)
	}
	if empty, err := isEmptyDir(upper); err != nil || !empty {
		return "", fmt.Errorf("snapshot %s: upper dir not empty (%v): %w", id, err, errdefs.ErrNotImplemented)
	}
	return target, nil
}

// upperOf is the upper dir mounts write to: a bind's source, an overlay's
// upperdir.
func upperOf(mounts []mount.Mount) string {
	if len(mounts) != 1 {
		return ""
	}
	m := mounts[0]
	switch m.Type {
	case "bind":
		return m.Source
	case "overlay":
		for _, o := range m.Options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				return v
			}
		}
	}
	return ""
}

// snapshotOfUpper is the id of the snapshot whose upper dir is upper.
func (s *Snapshotter) snapshotOfUpper(upper string) (string, bool) {
	rel, err := filepath.Rel(filepath.Join(s.root, "snapshots"), filepath.Clean(upper))
	if err != nil {
		return "", false
	}
	parts := strings.Split(rel, string(filepath.Separator))
	if len(parts) != 3 || (parts[1] != mountDir && parts[1] != unpackDir) || parts[2] != upperDir || parts[0] == ".." || strings.HasPrefix(parts[0], newPrefix) {
		return "", false
	}
	return parts[0], true
}

func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return false, err
}

// appliedLayer is the usage of the layer snug's differ wrote for snapshot
// id, and whether there is one. A layer applied onto a snapshot whose
// upper dir got files as well would lose them: that Commit is refused.
func (s *Snapshotter) appliedLayer(id string) (imagefs.Layer, bool, error) {
	path := filepath.Join(s.snapshotDir(id), applied)
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return imagefs.Layer{}, false, nil
	} else if err != nil {
		return imagefs.Layer{}, false, err
	}
	if empty, err := isEmptyDir(s.upperPath(id)); err != nil {
		return imagefs.Layer{}, true, err
	} else if !empty {
		return imagefs.Layer{}, true, fmt.Errorf("snapshot %s has an applied layer and files in its upper dir: %w", id, errdefs.ErrFailedPrecondition)
	}
	layer, err := imagefs.LayerUsage(path)
	return layer, true, err
}
