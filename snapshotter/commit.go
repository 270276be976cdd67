package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/failpoint"
)

// Commit turns the active snapshot key into the committed snapshot name: its
// upper dir is packed into a compact read-only layer image (imagefs.
// CreateLayer), the snapshot is recorded as committed, then the rw image is
// replaced by the layer on the same mount point.
//
// The layer is built before anything is recorded: a crash before the record
// leaves the snapshot active with a stray layer image (deleted on start-up);
// a crash after it leaves a committed snapshot whose rw image is still there
// (converge finishes the swap).
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
	// that could not mount it, this says why).
	if err := s.converge(ctx, id, snapshots.KindActive, snap.ParentIDs); err != nil {
		return fmt.Errorf("commit %s as %s: %w", key, name, err)
	}

	layerFile := filepath.Join(s.snapshotDir(id), layerImage)
	if err := removeIfExists(layerFile); err != nil { // from an earlier failed try
		return fmt.Errorf("commit %s as %s: %w", key, name, err)
	}
	layer, err := imagefs.CreateLayer(ctx, layerFile, s.upperPath(id))
	if err != nil {
		return fmt.Errorf("commit %s as %s: %w", key, name, err)
	}
	failpoint.Inject("commit-built")
	usage := snapshots.Usage{Size: layer.Bytes, Inodes: layer.Inodes}
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, err := storage.CommitActive(ctx, key, name, usage, opts...)
		return err
	}); err != nil {
		os.Remove(layerFile)
		return fmt.Errorf("commit %s as %s: %w", key, name, err)
	}
	failpoint.Inject("commit-recorded")
	if err := s.converge(ctx, id, snapshots.KindCommitted, snap.ParentIDs); err != nil {
		// The commit stands (the layer is complete and recorded); only the
		// swap to it failed. It is retried when a child is prepared and at
		// start-up, so the caller must not see a failed commit.
		log.G(ctx).WithError(err).WithField("name", name).Error("committed; mounting the layer failed and will be retried")
	}
	return nil
}
