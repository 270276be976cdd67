package snapshotter

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/failpoint"
)

// Commit turns the active snapshot key into the committed snapshot name.
// A layer snug's differ wrote straight from its tar (LayerTarget) becomes
// the snapshot's layer image. A layer's unpack that another differ filled
// (its dirs on the host, isUnpack) is packed into such an image
// (imagefs.CreateLayer). Any other snapshot's rw image becomes the layer's
// read-only image, in place (imagefs.ConvertToLayer): its upper dir is the
// layer. The image is synced and its usage measured before anything is
// recorded; the snapshot is then recorded as committed, and converge takes
// or converts the image, drops what the unpack used, and mounts the layer
// read-only.
//
// A crash before the record leaves the snapshot active with its data (the
// sync only wrote it); a crash after it leaves a committed snapshot whose
// image is not taken yet, or whose rw image is still there or half
// converted, and converge finishes at the next start (each of its steps
// can run again).
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	s.traffic.Mark()
	var (
		id   string
		snap storage.Snapshot
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		snap, err = storage.GetSnapshot(ctx, key)
		return err
	}); err != nil {
		return fmt.Errorf("commit %s as %s: %w", key, name, err)
	}
	id = snap.ID
	if snap.Kind != snapshots.KindActive {
		return fmt.Errorf("commit %s as %s: snapshot is not active: %w", key, name, errdefs.ErrFailedPrecondition)
	}
	// The rw image must be mounted to read its upper dir (after a restart
	// that could not mount it, this says why); converge also drops a layer
	// image an older snug's interrupted commit left beside it.
	if err := s.converge(ctx, id, snapshots.KindActive, snap.ParentIDs); err != nil {
		return fmt.Errorf("commit %s as %s: %w", key, name, err)
	}

	unpack := s.isUnpack(id)
	m, _, ok := s.images.Mounted(id)
	if !ok && !unpack {
		return fmt.Errorf("commit %s as %s: image not in service: %w", key, name, errdefs.ErrUnavailable)
	}
	start := time.Now()
	layer, fromTar, err := s.appliedLayer(id)
	switch {
	case fromTar || err != nil:
	case unpack:
		// Applied by another differ into the dirs on the host: packed
		// into the image snug's differ would have written.
		layer, err = imagefs.CreateLayer(ctx, filepath.Join(s.snapshotDir(id), applied), s.upperPath(id))
	default:
		layer, err = imagefs.LayerOf(m, s.upperPath(id))
	}
	if err != nil {
		return fmt.Errorf("commit %s as %s: %w", key, name, err)
	}
	failpoint.Inject("commit-built")
	usage := snapshots.Usage{Size: layer.Bytes, Inodes: layer.Inodes}
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, err := storage.CommitActive(ctx, key, name, usage, opts...)
		return err
	}); err != nil {
		return fmt.Errorf("commit %s as %s: %w", key, name, err)
	}
	failpoint.Inject("commit-recorded")
	synced := time.Since(start)
	if err := s.converge(ctx, id, snapshots.KindCommitted, snap.ParentIDs); err != nil {
		// The commit stands (the layer is synced and recorded); only the
		// conversion or the read-only mount failed. It is retried when a
		// child is prepared and at start-up, so the caller must not see a
		// failed commit.
		log.G(ctx).WithError(err).WithField("name", name).Error("committed; mounting the layer failed and will be retried")
	}
	log.G(ctx).WithFields(log.Fields{"name": name, "id": id, "layer": config.FormatBytes(layer.Bytes), "files": layer.Inodes,
		"from tar": fromTar, "synced": synced, "converted": time.Since(start) - synced}).Debug("committed")
	return nil
}
