package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/snugfs/snug/images"
	"github.com/snugfs/snug/internal/errclass"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/failpoint"
)

// Prepare creates an active snapshot: a thin writable image of its own,
// mounted, holding the overlay upper and work directories. An image layer's
// unpack (containerd's snapshot.ref label) gets no image: snug's differ
// writes the layer's image from its tar (see isUnpack).
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.createSnapshot(ctx, snapshots.KindActive, key, parent, opts)
}

// View creates a read-only snapshot of parent. It has no image: its mounts
// are its parents' layers.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.createSnapshot(ctx, snapshots.KindView, key, parent, opts)
}

// createSnapshot builds the snapshot's directory under a temporary name
// (the slow part, no lock held), records the snapshot and renames the
// directory to its id in one metadata transaction, then mounts its image.
// A crash at any point leaves either a temporary directory, a directory
// whose id is not recorded (both deleted on start-up), or a recorded
// snapshot that start-up mounts.
func (s *Snapshotter) createSnapshot(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (_ []mount.Mount, err error) {
	s.traffic.Mark()
	var base snapshots.Info
	for _, opt := range opts {
		if err := opt(&base); err != nil {
			return nil, err
		}
	}
	create, err := s.policy().createOptions(base.Labels)
	if err != nil {
		return nil, fmt.Errorf("prepare %s: %w", key, err)
	}
	// The class a label picks is known before the image is mounted, so
	// its mount options (image.async_commit, image.discard) apply from the
	// first mount.
	var class string
	if kind == snapshots.KindActive {
		class = base.Labels[config.LabelClass]
		if _, ok := s.config().Class(class); !ok {
			return nil, fmt.Errorf("prepare %s: label %s=%q: no such class in the policy's [policies]: %w", key, config.LabelClass, class, errdefs.ErrInvalidArgument)
		}
	}

	td, err := os.MkdirTemp(filepath.Join(s.root, "snapshots"), newPrefix)
	if err != nil {
		return nil, fmt.Errorf("prepare %s: %w", key, imagefs.HostError(err))
	}
	defer func() {
		if td != "" {
			if rerr := os.RemoveAll(td); rerr != nil {
				log.G(ctx).WithError(rerr).WithField("path", td).Warn("failed to remove temporary snapshot directory")
			}
		}
	}()
	_, unpack := base.Labels[snapshots.LabelSnapshotRef]
	unpack = unpack && kind == snapshots.KindActive
	pre, err := s.buildDir(ctx, td, kind, unpack, create, s.rwMountOptions(class))
	if err != nil {
		return nil, fmt.Errorf("prepare %s: %w", key, err)
	}
	defer func() { // before td goes: a premounted image not placed
		if pre != nil && pre.Detached() {
			if uerr := pre.Unmount(context.WithoutCancel(ctx)); uerr != nil {
				log.G(ctx).WithError(uerr).WithField("key", key).Warn("failed to unmount a premounted image")
			}
		}
	}()
	if class != "" {
		if err := images.WriteClass(td, class); err != nil {
			return nil, fmt.Errorf("prepare %s: %w", key, err)
		}
	}

	if unpack {
		// An image layer's extraction: snug's differ may write the layer
		// straight into its image (LayerTarget).
		if err := os.WriteFile(filepath.Join(td, extraction), nil, 0o600); err != nil {
			return nil, fmt.Errorf("prepare %s: %w", key, imagefs.HostError(err))
		}
	}

	failpoint.Inject("prepare-built")
	var snap storage.Snapshot
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		snap, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...)
		if err != nil {
			return err
		}
		dir := s.snapshotDir(snap.ID)
		if _, err := os.Lstat(dir); err == nil {
			// Left by a transaction that never committed; the id is free.
			if err := s.removeDir(ctx, dir); err != nil {
				return err
			}
		}
		if err := os.Rename(td, dir); err != nil {
			return err
		}
		td = ""
		failpoint.Inject("prepare-renamed") // the record is not committed yet
		return nil
	}); err != nil {
		return nil, fmt.Errorf("prepare %s: %w", key, err)
	}
	failpoint.Inject("prepare-recorded")

	err = s.ensureLayersMounted(ctx, snap.ParentIDs)
	if err == nil {
		err = s.settle(ctx, snap.ID, kind, snap.ParentIDs, pre)
	}
	if err != nil {
		// Prepare fails as a whole: forget the snapshot again.
		if rerr := s.Remove(context.WithoutCancel(ctx), key); rerr != nil {
			log.G(ctx).WithError(rerr).WithField("key", key).Warn("failed to undo a snapshot that could not be mounted")
		}
		return nil, fmt.Errorf("prepare %s: %w", key, err)
	}
	return s.mounts(snap), nil
}

// buildDir fills a new snapshot directory: the rw image and its mount point
// for an active snapshot, an empty directory for a view. A rw image the
// pool held mounted comes with its detached mount, for settle to place.
// A layer's unpack gets no image: its upper and work dirs are made on the
// host (isUnpack), where the layer's image is not written but from its tar
// (LayerTarget), or packed at Commit. mo is how the rw image is mounted
// (its class's, rwMountOptions).
func (s *Snapshotter) buildDir(ctx context.Context, dir string, kind snapshots.Kind, unpack bool, create imagefs.CreateOptions, mo imagefs.MountOptions) (*imagefs.Mounted, error) {
	if err := os.Mkdir(filepath.Join(dir, mountDir), 0o755); err != nil {
		return nil, err
	}
	switch {
	case unpack:
		// What is in it is made by settle (readyUnpack), as at start-up.
		return nil, os.Mkdir(filepath.Join(dir, unpackDir), 0o700)
	case kind == snapshots.KindActive:
		img := filepath.Join(dir, rwImage)
		if m, ok := s.pool.take(s.bgCtx, img, create, mo); ok {
			return m, nil
		}
		return s.makeImage(ctx, img, create, mo)
	case kind == snapshots.KindView:
		return nil, os.Mkdir(filepath.Join(dir, emptyDir), 0o755)
	}
	return nil, fmt.Errorf("cannot create a snapshot of kind %v", kind)
}

// makeImage makes a new rw image at img, for a Prepare the pool had none
// for, and mounts it detached, as the pool makes its premounted images:
// settle places the mount once the snapshot is recorded. Attaching syncs
// the file, so the copy of the template is not synced on its own
// (Templates.CreateToAttach): the image is on the disk whole before the
// snapshot is recorded, with two cache flushes of the host's disk fewer.
// A full host may have room again once the removals in flight have
// deleted their images: it waits for them, once. mo is how it is mounted.
func (s *Snapshotter) makeImage(ctx context.Context, img string, create imagefs.CreateOptions, mo imagefs.MountOptions) (*imagefs.Mounted, error) {
	err := s.templates.CreateToAttach(ctx, img, create)
	if errors.Is(err, imagefs.ErrHostFull) {
		if waited, werr := s.removing.wait(ctx); waited && werr == nil {
			err = s.templates.CreateToAttach(ctx, img, create)
		}
	}
	if err != nil {
		return nil, err
	}
	mo.New = true
	return imagefs.MountDetached(ctx, img, mo)
}

// ensureUpper makes the overlay directories in a mounted rw image. The
// upper dir is the container's root: 0755 like any root directory.
func ensureUpper(mnt string) error {
	if err := imagefs.RestoreStaged(filepath.Join(mnt, upperDir)); err != nil {
		return err
	}
	for _, d := range []struct {
		name string
		mode os.FileMode
	}{{upperDir, 0o755}, {workDir, 0o711}} {
		if err := os.Mkdir(filepath.Join(mnt, d.name), d.mode); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		if err := requireDir(filepath.Join(mnt, d.name)); err != nil {
			return err
		}
	}
	return nil
}

// ErrCraftedImage is returned for an image whose top directories are not
// what snug makes: an upper, work or layer directory that is a symlink (or
// not a directory) would send a container's overlay outside the image.
var ErrCraftedImage = errclass.New("image holds a crafted directory", errdefs.ErrFailedPrecondition)

// requireDir checks that path is a directory itself, not a symlink to one.
func requireDir(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is a %v, not a directory", ErrCraftedImage, path, fi.Mode().Type())
	}
	return nil
}

// ensureLayersMounted mounts any parent layer that is not mounted (a commit
// whose swap failed, or an unmount by hand). The check is one stat pair per
// parent: a mount point has another device than its directory's parent.
func (s *Snapshotter) ensureLayersMounted(ctx context.Context, parentIDs []string) error {
	for _, p := range parentIDs {
		if imagefs.IsMountPoint(s.mountPath(p)) {
			continue
		}
		if err := s.converge(ctx, p, snapshots.KindCommitted, nil); err != nil {
			return fmt.Errorf("parent layer %s: %w", p, err)
		}
	}
	return nil
}
