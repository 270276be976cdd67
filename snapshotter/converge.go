package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/failpoint"
)

// converge makes one recorded snapshot's files and mounts match its record,
// whatever step a crash interrupted. It is idempotent; start-up reconcile
// runs it for every snapshot, Commit before and after recording:
//   - active: its rw image is mounted once on mnt with upper and work dirs,
//     a layer image from a commit that never landed is deleted, and its
//     window keeper runs; a layer's unpack has its dirs on the host;
//   - committed: its layer image is mounted read-only on mnt, and the rw
//     image it was made from (a commit that landed but was not finished) is
//     unmounted and deleted, or the layer's unpack dirs;
//   - view: nothing to mount.
func (s *Snapshotter) converge(ctx context.Context, id string, kind snapshots.Kind, parentIDs []string) error {
	return s.convergeIn(ctx, nil, id, kind, parentIDs)
}

// convergeIn is converge, looking images up in tbl, the kernel's loop
// devices and mounts read once for all snapshots at start-up (nil: read
// them now). It is exact for this snapshot's images: converging one
// snapshot touches no other's.
func (s *Snapshotter) convergeIn(ctx context.Context, tbl *imagefs.MountTable, id string, kind snapshots.Kind, parentIDs []string) error {
	dir := s.snapshotDir(id)
	mnt := s.mountPath(id)
	// A half-made layer image from a commit a crash interrupted.
	if _, err := imagefs.RemoveTemporaries(ctx, dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("snapshot %s: %w", id, err)
	}
	switch kind {
	case snapshots.KindActive:
		if err := removeIfExists(filepath.Join(dir, layerImage)); err != nil {
			return err
		}
		if s.isUnpack(id) {
			return s.readyUnpack(id, parentIDs, false)
		}
		if reason := s.quarantined(id); reason != "" {
			return fmt.Errorf("snapshot %s: %w: %s", id, imagefs.ErrQuarantined, reason)
		}
		m, err := s.ensureMounted(ctx, tbl, filepath.Join(dir, rwImage), mnt, s.snapshotMountOptions(id))
		if err != nil {
			return err
		}
		// A daemon that died during an online check left it frozen,
		// with every writer blocked.
		if err := m.Thaw(); err != nil {
			log.G(ctx).WithError(err).WithField("id", id).Warn("cannot thaw image")
		}
		return s.serveActive(ctx, id, m, parentIDs)
	case snapshots.KindCommitted:
		fresh, err := s.convertLayer(ctx, tbl, id)
		if err != nil {
			return err
		}
		o := imagefs.MountOptions{ReadOnly: true, DirectIO: s.policy().mount.DirectIO}
		var m *imagefs.Mounted
		if fresh {
			// Made for this Commit and renamed into place just now:
			// attached nowhere, and nothing was ever mounted on mnt.
			o.New = true
			m, err = imagefs.Mount(ctx, filepath.Join(dir, layerImage), mnt, o)
		} else {
			m, err = s.ensureMounted(ctx, tbl, filepath.Join(dir, layerImage), mnt, o)
		}
		if err != nil {
			return err
		}
		s.images.ServeLayer(ctx, id, m)
		if err := requireDir(s.layerPath(id)); err != nil {
			return fmt.Errorf("snapshot %s: %w", id, err)
		}
	}
	return nil
}

// convertLayer turns a committed snapshot's rw image, still there after
// its Commit (or a crash during one), into its layer image
// (imagefs.ConvertToLayer). A layer image made already beside it wins, and
// the rw image is dropped unwritten: the layer snug's differ wrote from the
// tar (renamed to the layer image here), or one an older snug, which packed
// layers into a new file, made of the rw image's content.
//
// fresh reports a layer's unpack whose image was taken just now, by this
// call: it was never attached, and its mount point never used.
func (s *Snapshotter) convertLayer(ctx context.Context, tbl *imagefs.MountTable, id string) (fresh bool, err error) {
	dir := s.snapshotDir(id)
	rw, layer := filepath.Join(dir, rwImage), filepath.Join(dir, layerImage)
	if _, err := os.Lstat(rw); errors.Is(err, os.ErrNotExist) {
		return s.finishUnpack(id)
	} else if err != nil {
		return false, fmt.Errorf("snapshot %s: %w", id, err)
	}
	s.images.Unmounting(id)
	if _, err := takeApplied(dir); err != nil {
		return false, fmt.Errorf("snapshot %s: %w", id, err)
	}
	if _, err := os.Lstat(layer); err == nil {
		if m, err := find(tbl, rw); err == nil {
			if err := m.Discard(ctx); err != nil {
				return false, fmt.Errorf("snapshot %s: %w", id, err)
			}
		} else if !errors.Is(err, imagefs.ErrNotMounted) {
			return false, fmt.Errorf("snapshot %s: %w", id, err)
		}
		return false, os.Remove(rw)
	}
	m, err := s.ensureMounted(ctx, tbl, rw, s.mountPath(id), s.snapshotMountOptions(id))
	if err != nil {
		return false, err
	}
	if err := imagefs.ConvertToLayer(ctx, m, upperDir, workDir, layer); err != nil {
		return false, fmt.Errorf("snapshot %s: %w", id, err)
	}
	return false, nil
}

// finishUnpack finishes the Commit of a layer's unpack (isUnpack): the
// layer image made for it (by snug's differ, or packed from its upper dir)
// becomes its layer image, then its dirs on the host go. Each step can run
// again after a crash.
func (s *Snapshotter) finishUnpack(id string) (fresh bool, err error) {
	dir := s.snapshotDir(id)
	// Renamed away before they are deleted, so a directory half deleted
	// is never taken for the unpack dirs.
	gone := filepath.Join(dir, unpackDir+".gone")
	if s.isUnpack(id) {
		if fresh, err = takeApplied(dir); err != nil {
			return false, fmt.Errorf("snapshot %s: %w", id, err)
		}
		if _, err := os.Lstat(filepath.Join(dir, layerImage)); err != nil {
			return false, fmt.Errorf("snapshot %s: committed without a layer image: %w", id, err)
		}
		if err := os.Rename(filepath.Join(dir, unpackDir), gone); err != nil {
			return false, fmt.Errorf("snapshot %s: %w", id, err)
		}
		failpoint.Inject("unpack-renamed")
	}
	if err := os.RemoveAll(gone); err != nil {
		return false, fmt.Errorf("snapshot %s: %w", id, err)
	}
	return fresh, nil
}

// settle brings a snapshot created just now into service. It is converge
// without the search for an earlier mount (sysfs and mount-table scans on
// `ctr run`'s critical path): an image renamed into place a moment ago has
// none.
func (s *Snapshotter) settle(ctx context.Context, id string, kind snapshots.Kind, parentIDs []string, pre *imagefs.Mounted) error {
	if kind != snapshots.KindActive {
		return s.converge(ctx, id, kind, parentIDs)
	}
	if pre == nil && s.isUnpack(id) {
		return s.readyUnpack(id, parentIDs, true)
	}
	m, err := s.mountNew(ctx, id, pre)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", id, err)
	}
	return s.serveActive(ctx, id, m, parentIDs)
}

// mountNew mounts a new snapshot's rw image, renamed into place a moment
// ago: it places the pool's detached mount of it (pre), or mounts it.
func (s *Snapshotter) mountNew(ctx context.Context, id string, pre *imagefs.Mounted) (*imagefs.Mounted, error) {
	image, mnt := filepath.Join(s.snapshotDir(id), rwImage), s.mountPath(id)
	if pre != nil {
		if err := pre.Place(image, mnt); err != nil {
			if uerr := pre.Unmount(context.WithoutCancel(ctx)); uerr != nil {
				log.G(ctx).WithError(uerr).WithField("snapshot", id).Warn("failed to unmount a premounted image")
			}
			return nil, err
		}
		return pre, nil
	}
	o := s.snapshotMountOptions(id)
	o.New = true // from the pool or a template: attached nowhere
	return imagefs.Mount(ctx, image, mnt, o)
}

// serveActive readies a mounted rw image: in service with the images
// Manager (its headroom free, its window keeper running), the overlay dirs
// in place.
func (s *Snapshotter) serveActive(ctx context.Context, id string, m *imagefs.Mounted, parentIDs []string) error {
	mnt := s.mountPath(id)
	if err := s.images.Serve(ctx, id, s.snapshotDir(id), m); err != nil {
		return err
	}
	_, statErr := os.Lstat(filepath.Join(mnt, upperDir))
	if err := ensureUpper(mnt); err != nil {
		return fmt.Errorf("snapshot %s: %w", id, err)
	}
	if errors.Is(statErr, os.ErrNotExist) && len(parentIDs) > 0 {
		// Like containerd's overlay: a new upper dir takes the owner of
		// the parent's root, so the container's root keeps its owner.
		if err := chownLike(filepath.Join(mnt, upperDir), s.layerPath(parentIDs[0])); err != nil {
			return fmt.Errorf("snapshot %s: %w", id, err)
		}
	}
	return nil
}

// readyUnpack readies a layer's unpack (isUnpack): its upper and work dirs
// on the host, and the empty lower dir of its overlay while it has no
// parent (mounts); nothing mounted. A new one's upper dir takes the owner of
// the parent's root, as in serveActive (later, the applier may have given
// it the layer's own).
func (s *Snapshotter) readyUnpack(id string, parentIDs []string, created bool) error {
	dirs := filepath.Join(s.snapshotDir(id), unpackDir)
	if err := ensureUpper(dirs); err != nil {
		return fmt.Errorf("snapshot %s: %w", id, err)
	}
	if err := os.Mkdir(filepath.Join(dirs, emptyDir), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("snapshot %s: %w", id, err)
	}
	if err := requireDir(filepath.Join(dirs, emptyDir)); err != nil {
		return fmt.Errorf("snapshot %s: %w", id, err)
	}
	if !created || len(parentIDs) == 0 {
		return nil
	}
	if err := chownLike(filepath.Join(dirs, upperDir), s.layerPath(parentIDs[0])); err != nil {
		return fmt.Errorf("snapshot %s: %w", id, err)
	}
	return nil
}

// find looks the image up in tbl, or in the kernel's tables now.
func find(tbl *imagefs.MountTable, image string) (*imagefs.Mounted, error) {
	if tbl == nil {
		return imagefs.FindMount(image)
	}
	return tbl.Find(image)
}

// ensureMounted mounts image on mnt unless it is mounted there already. An
// image mounted somewhere else is an error: snug never mounts an image twice.
func (s *Snapshotter) ensureMounted(ctx context.Context, tbl *imagefs.MountTable, image, mnt string, o imagefs.MountOptions) (*imagefs.Mounted, error) {
	if tbl == nil {
		var err error
		if tbl, err = imagefs.ReadMountTable(); err != nil {
			return nil, err
		}
	}
	// A daemon of an earlier version killed while it worked on the image
	// unmounted (a shrink, a repair) left it on a private mount.
	if released, err := tbl.ReleaseStale(ctx, image); err != nil {
		return nil, err
	} else if released {
		tbl = nil
	}
	m, err := find(tbl, image)
	switch {
	case err == nil:
		if want, _ := filepath.EvalSymlinks(mnt); m.Dir != mnt && m.Dir != want {
			return nil, fmt.Errorf("%s is mounted on %s, expected %s: %w", image, m.Dir, mnt, imagefs.ErrInUse)
		}
		if !m.ReadOnly {
			// Found mounted (at start-up, attached by an earlier daemon):
			// its device may drop flushes. One sysfs read. A container may
			// run on it already, so say it, loudly, and serve it.
			if err := imagefs.KeepFlushes(ctx, m.Device); err != nil {
				log.G(ctx).WithError(err).WithField("image", image).Error("fsyncs on this image do not reach the host disk")
			}
		}
		return m, nil
	case !errors.Is(err, imagefs.ErrNotMounted):
		return nil, err
	}
	// Something else on mnt (the rw image of a finished commit, say) must
	// go. The picture tells when nothing is there: UnmountBelow reads the
	// mount table and every loop device again, which at start-up, once
	// per snapshot, made reconcile quadratic.
	if tbl != nil && !tbl.Busy(mnt) {
		return imagefs.Mount(ctx, image, mnt, o)
	}
	if err := imagefs.UnmountBelow(ctx, mnt); err != nil {
		return nil, err
	}
	return imagefs.Mount(ctx, image, mnt, o)
}

// reconcile runs at start-up, before anything is served: it deletes what
// does not belong to a recorded snapshot and converges every recorded one.
// Parents are converged before their children (ids grow with creation).
func (s *Snapshotter) reconcile(ctx context.Context) error {
	type rec struct {
		id      string
		kind    snapshots.Kind
		parents []string
	}
	var recs []rec
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		err := storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if info.Kind == snapshots.KindCommitted { // GetSnapshot is for active and view
				id, _, _, err := storage.GetInfo(ctx, info.Name)
				recs = append(recs, rec{id: id, kind: info.Kind})
				return err
			}
			snap, err := storage.GetSnapshot(ctx, info.Name)
			if err != nil {
				return err
			}
			recs = append(recs, rec{snap.ID, snap.Kind, snap.ParentIDs})
			return nil
		})
		if errdefs.IsNotFound(err) { // a new store has no bucket yet
			return nil
		}
		return err
	}); err != nil {
		return err
	}
	if err := s.cleanup(ctx, true); err != nil {
		return err
	}
	tbl, err := imagefs.ReadMountTable()
	if err != nil {
		return err
	}
	var active []string
	for _, r := range recs {
		if r.kind == snapshots.KindActive {
			active = append(active, r.id)
		}
	}
	damaged := s.checkUnmounted(ctx, tbl, active)
	var (
		mu     sync.Mutex // protects failed
		failed int
	)
	one := func(r rec) {
		err := damaged[r.id]
		if err != nil {
			err = fmt.Errorf("snapshot %s: %w", r.id, err) // left unmounted for the error monitor
		} else {
			err = s.convergeIn(ctx, tbl, r.id, r.kind, r.parents)
		}
		if err == nil {
			return
		}
		// One broken snapshot must not keep the others from being served.
		log.G(ctx).WithError(err).WithField("id", r.id).Error("cannot restore snapshot")
		mu.Lock()
		failed++
		mu.Unlock()
		if r.kind != snapshots.KindView && !errors.Is(err, imagefs.ErrQuarantined) {
			s.images.MountFailed(ctx, r.id, r.kind == snapshots.KindCommitted, err)
		}
	}
	// Layers first: an active snapshot's new upper dir takes the owner of
	// its parent's root. Within each phase the snapshots converge side by
	// side (converging one touches no other's images): a stop unmounts
	// every idle image, and 300 of them mounted one after another took
	// 24 s before snug served again.
	var layers, others []rec
	for _, r := range recs {
		if r.kind == snapshots.KindCommitted {
			layers = append(layers, r)
		} else {
			others = append(others, r)
		}
	}
	order := append(layers, others...)
	if len(order) > 0 {
		one(order[0])
		failpoint.Inject("reconcile-converged") // one snapshot converged, the rest not
	}
	for _, phase := range [][]rec{layers, others} {
		var wg sync.WaitGroup
		slots := make(chan struct{}, reconcileParallel)
		for _, r := range phase {
			if r.id == order[0].id {
				continue
			}
			wg.Add(1)
			slots <- struct{}{}
			go func() {
				defer func() { <-slots; wg.Done() }()
				one(r)
			}()
		}
		wg.Wait()
	}
	if failed > 0 {
		log.G(ctx).Errorf("%d of %d snapshots could not be restored", failed, len(recs))
	}
	return nil
}

// reconcileParallel is how many snapshots start-up converges at once.
const reconcileParallel = 8

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// chownLike gives dir the owner of ref.
func chownLike(dir, ref string) error {
	st, err := os.Stat(ref)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || (sys.Uid == 0 && sys.Gid == 0) {
		return nil
	}
	return os.Lchown(dir, int(sys.Uid), int(sys.Gid))
}

// isTemporary reports a snapshot directory still being built.
func isTemporary(name string) bool { return strings.HasPrefix(name, newPrefix) }

// takeApplied makes the layer snug's differ wrote for a committed snapshot
// its layer image (a rename, made durable), unless it has one; took says
// it renamed one.
func takeApplied(dir string) (took bool, err error) {
	from, to := filepath.Join(dir, applied), filepath.Join(dir, layerImage)
	if _, err := os.Lstat(from); errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if _, err := os.Lstat(to); err == nil {
		return false, os.Remove(from)
	}
	if err := os.Rename(from, to); err != nil {
		return false, err
	}
	failpoint.Inject("applied-taken")
	d, err := os.Open(dir)
	if err != nil {
		return true, err
	}
	defer d.Close()
	return true, d.Sync()
}
