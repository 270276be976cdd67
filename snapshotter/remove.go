package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/failpoint"
)

// Remove forgets the snapshot key and has its image unmounted and deleted
// in the background (removing.go). The record goes first: once Remove
// returns, the key is free. If the image is still busy (a container still
// has it mounted), it stays until Cleanup or the next start-up deletes it;
// Remove does not fail for that, because the snapshot is gone already.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	s.traffic.Mark()
	var id string
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		var err error
		id, _, err = storage.Remove(ctx, key)
		return err
	}); err != nil {
		return fmt.Errorf("remove %s: %w", key, err)
	}
	failpoint.Inject("remove-recorded")
	s.annotated.Delete(id)
	s.removeLater(ctx, s.snapshotDir(id))
	return nil
}

// Cleanup waits for the removals in flight, then deletes the directories
// of snapshots that are no longer recorded (removed while busy, or left by
// a crash). containerd's garbage collector calls it.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	if _, err := s.removing.wait(ctx); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	return s.cleanup(ctx, false)
}

// staleAfter is how old a temporary snapshot directory must be before
// Cleanup takes it for a crash's leftover rather than a build in progress.
const staleAfter = 10 * time.Minute

// cleanup deletes unrecorded snapshot directories. At start-up (nothing is
// being built yet) it deletes every temporary directory too; later only
// those older than staleAfter.
func (s *Snapshotter) cleanup(ctx context.Context, startup bool) error {
	var dirs []string
	// A write transaction keeps snapshots from being created while we look:
	// a directory renamed to its id is recorded in the same transaction.
	// It changes nothing, so it ends rolled back: a commit would sync the
	// store twice for nothing, at every garbage collection.
	err := s.lookingOnly(ctx, func(ctx context.Context) error {
		ids, err := storage.IDMap(ctx)
		if err != nil && !errdefs.IsNotFound(err) { // a new store has no bucket yet
			return err
		}
		entries, err := os.ReadDir(filepath.Join(s.root, "snapshots"))
		if err != nil {
			return err
		}
		for _, e := range entries {
			name := e.Name()
			if _, ok := ids[name]; ok || s.removing.has(filepath.Join(s.root, "snapshots", name)) {
				continue
			}
			if isNumericID(name) || (isTemporary(name) && (startup || olderThan(e, staleAfter))) {
				dirs = append(dirs, filepath.Join(s.root, "snapshots", name))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	for _, dir := range dirs {
		if err := s.removeDir(ctx, dir); err != nil {
			log.G(ctx).WithError(err).WithField("path", dir).Warn("cleanup: cannot delete yet")
		} else {
			log.G(ctx).WithField("path", dir).Debug("cleanup: deleted")
		}
	}
	return nil
}

// lookingOnly runs fn in a write transaction of the metadata store, which
// keeps every other writer out meanwhile, and rolls it back: for fn that
// only reads.
func (s *Snapshotter) lookingOnly(ctx context.Context, fn func(ctx context.Context) error) error {
	ctx, tx, err := s.ms.TransactionContext(ctx, true)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	return fn(ctx)
}

func olderThan(e os.DirEntry, d time.Duration) bool {
	info, err := e.Info()
	return err == nil && time.Since(info.ModTime()) > d
}

// removeDir stops the keeper of a snapshot directory, unmounts what is
// mounted below it and deletes it. It deletes nothing while anything below
// is still mounted. A removed snapshot's rw image is discarded, not
// unmounted: what the container left in the page cache is dropped instead
// of written to a file about to be deleted, and the unmount commits no
// journal, so it sends no cache flush to the host's disk (each flush
// through the loop device is an fsync of the image file: a `ctr run --rm`
// cost the host 42 flushes with the unmount, 33 with the discard, overlayfs
// 27; docs/design.md).
func (s *Snapshotter) removeDir(ctx context.Context, dir string) error {
	id := filepath.Base(dir)
	m, layer, inService := s.images.Mounted(id)
	s.images.Unmounting(id)
	if inService && !layer && !m.ReadOnly {
		if err := m.Discard(ctx); err != nil {
			return fmt.Errorf("delete %s: %w", dir, err)
		}
	}
	if err := imagefs.UnmountBelow(ctx, dir); err != nil {
		return fmt.Errorf("delete %s: %w", dir, err)
	}
	failpoint.Inject("removedir-unmounted")
	return os.RemoveAll(dir)
}
