package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/failpoint"
	"github.com/snugfs/snug/internal/marker"
)

// quarantineFile marks an active snapshot whose image e2fsck could not make
// clean: it is kept for an operator and never mounted again by snug. It
// holds the reason.
const quarantineFile = "quarantined"

// damagedFile marks a committed snapshot whose layer image reported
// errors; it holds the reason. The layer stays in service (its containers
// run on), and snug status shows it.
const damagedFile = "damaged"

// MarkDamaged marks the layer of committed snapshot id damaged, with the
// reason.
func (s *Snapshotter) MarkDamaged(id, reason string) error {
	if !isNumericID(id) {
		return fmt.Errorf("mark %q: not a snapshot id: %w", id, errdefs.ErrInvalidArgument)
	}
	if _, err := os.Lstat(filepath.Join(s.snapshotDir(id), layerImage)); err != nil {
		return fmt.Errorf("mark snapshot %s: no layer image: %w", id, err)
	}
	return marker.Write(filepath.Join(s.snapshotDir(id), damagedFile), reason)
}

// Offline takes an active snapshot's image out of service, unmounted, and
// calls fn with the image file: the error monitor repairs it there. The
// container's own root mount must be gone (its task deleted), or the
// unmount fails and the image stays in service. If fn succeeds the image
// is mounted and served again; if it fails the snapshot is quarantined:
// left unmounted, marked with fn's error, and refused by Mounts until an
// operator deals with it.
func (s *Snapshotter) Offline(ctx context.Context, id string, fn func(image string) error) error {
	if !isNumericID(id) {
		return fmt.Errorf("offline %q: not a snapshot id: %w", id, errdefs.ErrInvalidArgument)
	}
	dir := s.snapshotDir(id)
	image := filepath.Join(dir, rwImage)
	if _, err := os.Lstat(image); err != nil {
		return fmt.Errorf("offline snapshot %s: no writable image: %w", id, err)
	}
	s.images.Unmounting(id)
	if m, err := imagefs.FindMount(image); err == nil {
		err := m.Unmount(ctx)
		if errors.Is(err, imagefs.ErrStillAttached) {
			// Unmounted here, but the filesystem lives on in a mount
			// namespace a container being created copied: it goes at
			// that container's pivot_root, which takes seconds when
			// many start at once. The containers of this image are
			// stopped; waiting costs nothing but the repair's time.
			err = imagefs.WaitDetached(ctx, image, m.Device, offlineDetachWait)
		}
		if err != nil {
			return errors.Join(fmt.Errorf("offline snapshot %s: %w", id, err), s.converge(ctx, id, snapshots.KindActive, nil))
		}
	} else if !errors.Is(err, imagefs.ErrNotMounted) {
		return errors.Join(fmt.Errorf("offline snapshot %s: %w", id, err), s.converge(ctx, id, snapshots.KindActive, nil))
	}
	failpoint.Inject("offline-unmounted")
	if err := fn(image); err != nil {
		if werr := marker.Write(filepath.Join(dir, quarantineFile), err.Error()); werr != nil {
			err = errors.Join(err, werr)
		}
		return fmt.Errorf("snapshot %s: %w", id, err)
	}
	return s.converge(ctx, id, snapshots.KindActive, nil)
}

// offlineDetachWait bounds the wait for an image whose filesystem lives on
// after its unmount, beyond Unmount's own.
const offlineDetachWait = 30 * time.Second

// Quarantine marks the active snapshot id's image quarantined with the
// reason and unmounts it, keeping the file: Mounts refuses the snapshot from
// then on with the reason, snug status shows it, and start-up leaves it
// unmounted. The mark is written first, so it stays when the unmount fails
// (a container's root still on the image): a second call retries it.
func (s *Snapshotter) Quarantine(ctx context.Context, id, reason string) error {
	if !isNumericID(id) {
		return fmt.Errorf("quarantine %q: not a snapshot id: %w", id, errdefs.ErrInvalidArgument)
	}
	dir := s.snapshotDir(id)
	image := filepath.Join(dir, rwImage)
	if _, err := os.Lstat(image); err != nil {
		return fmt.Errorf("quarantine snapshot %s: no writable image: %w", id, err)
	}
	if err := marker.Write(filepath.Join(dir, quarantineFile), reason); err != nil {
		return fmt.Errorf("quarantine snapshot %s: %w", id, err)
	}
	s.images.Unmounting(id)
	m, err := imagefs.FindMount(image)
	if errors.Is(err, imagefs.ErrNotMounted) {
		return nil
	}
	if err == nil {
		err = m.Unmount(ctx)
	}
	if err != nil {
		return fmt.Errorf("quarantine snapshot %s: unmount: %w", id, err)
	}
	return nil
}

// quarantined returns the reason snapshot id is quarantined, or "".
func (s *Snapshotter) quarantined(id string) string {
	return marker.Read(filepath.Join(s.snapshotDir(id), quarantineFile))
}
