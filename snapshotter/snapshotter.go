package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/log"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/images"
	"github.com/snugfs/snug/internal/sharedmount"
	"github.com/snugfs/snug/internal/traffic"
)

// File names inside a snapshot's directory, root/snapshots/<id>/.
const (
	rwImage    = "rw.img"      // an active snapshot's thin writable image
	layerImage = "layer.img"   // a committed snapshot's read-only layer image
	applied    = "applied.img" // a layer snug's differ wrote for an active snapshot, taken at its Commit
	extraction = "extraction"  // marks an active snapshot the unpacker prepared for a layer
	unpackDir  = "unpack"      // such a snapshot's upper and work dirs, on the host: it has no image
	mountDir   = "mnt"         // where the snapshot's image is mounted
	emptyDir   = "empty"       // the content of a view without parent
	upperDir   = "upper"       // overlay upper dir, inside the mounted rw image
	workDir    = "work"        // overlay work dir, inside the mounted rw image
	newPrefix  = "new-"        // a snapshot directory still being built
)

// Snapshotter is containerd's snapshots.Snapshotter on thin ext4 images.
// It is safe for concurrent use.
type Snapshotter struct {
	root string
	ms   *storage.MetaStore
	cfg  atomic.Pointer[config.Config]
	pool *pool
	// traffic marks Prepare, Commit, Remove and container starts and
	// stops; background work waits for a lull in it.
	traffic *traffic.Meter
	// templates make the rw images (a copy of one made per set of
	// options, with a UUID of its own).
	templates *imagefs.Templates
	// images is told of every image mounted and about to be unmounted:
	// it keeps each one's life in service (see package images).
	images *images.Manager

	// bgCtx ends the pool's refill when the snapshotter closes; bg
	// counts it.
	bgCtx  context.Context
	stopBg context.CancelFunc
	bg     sync.WaitGroup
	// removing deletes removed snapshots' images in the background.
	removing *removals

	// annotations looks up a container's OCI annotations in containerd
	// (SetAnnotationSource); nil without containerd. annotateMu is held
	// while they are applied to an image (never while a lookup runs).
	annotations atomic.Pointer[AnnotationSource]
	annotateMu  sync.Mutex
	// annotated holds, per rw snapshot id, the annotations snug acts on
	// of the container on it, once read (annotations.go).
	annotated sync.Map

	closeOnce sync.Once
}

var _ snapshots.Snapshotter = (*Snapshotter)(nil)

// New opens (or creates) the snapshotter state in cfg.Root and reconciles it
// with what the kernel shows: every snapshot's image is mounted exactly once,
// commits and removals a crash interrupted are finished or undone, and
// leftovers are unmounted and deleted. Images stay mounted across restarts,
// so running containers are not disturbed.
func New(ctx context.Context, cfg config.Config) (*Snapshotter, error) {
	root := cfg.Root
	if err := os.MkdirAll(filepath.Join(root, "snapshots"), 0o700); err != nil {
		return nil, fmt.Errorf("snapshotter root %s: %w", root, err)
	}
	// Before any mount below root: a bind of root onto itself would hide it.
	shareRoot(ctx, root)
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("snapshotter metadata in %s: %w", root, err)
	}
	imagefs.SweepPrivateDirs()
	tpls, err := imagefs.NewTemplates(ctx, filepath.Join(root, "templates"))
	if err != nil {
		ms.Close()
		return nil, fmt.Errorf("image templates in %s: %w", root, err)
	}
	tr := &traffic.Meter{}
	pl, err := newPool(ctx, root, policyFrom(cfg).create, poolPolicyFrom(cfg), tpls, tr)
	if err != nil {
		ms.Close()
		return nil, fmt.Errorf("image pool in %s: %w", root, err)
	}
	bgCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s := &Snapshotter{
		root:      root,
		ms:        ms,
		pool:      pl,
		traffic:   tr,
		templates: tpls,
		bgCtx:     bgCtx,
		stopBg:    stop,
		removing:  newRemovals(),
	}
	s.cfg.Store(&cfg)
	s.images = images.New(ctx, s, cfg, tr)
	if err := s.reconcile(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("reconcile %s: %w", root, err)
	}
	s.images.Start()
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.pool.tend(bgCtx)
	}()
	return s, nil
}

// Close stops the pool's refill and the images' life in service (window
// keepers, scheduled reclaims; a reclaim running finishes), unmounts the
// images nothing uses and closes the metadata store. The images a container uses stay mounted: containers
// keep running while snug restarts (releaseUnused).
func (s *Snapshotter) Close() error { return s.close(true) }

// close is Close; release false leaves every image mounted, as a killed
// daemon does (the tests' stand-in for a crash).
func (s *Snapshotter) close(release bool) error {
	var err error
	s.closeOnce.Do(func() {
		s.stopBg()
		s.removing.close()
		s.images.Close()
		s.bg.Wait()
		s.pool.wait()
		s.pool.close(context.Background(), !release)
		if release {
			s.releaseUnused(context.Background())
		}
		err = s.ms.Close()
		if release {
			if uerr := sharedmount.Undo(s.root); uerr != nil {
				log.G(context.Background()).WithError(uerr).Warn("closing: the shared bind of the state directory stays")
			}
		}
	})
	return err
}

// shareRoot puts root on a shared mount (see package sharedmount), so an
// image unmounted in the host's mount namespace is unmounted at once in the
// copies that containers being created hold: a repair, a removal or a
// commit then finds the image free without waiting for their pivot_root. A
// failure costs only that wait, so it is logged, not fatal.
func shareRoot(ctx context.Context, root string) {
	res, err := sharedmount.Ensure(root)
	l := log.G(ctx).WithField("root", root)
	switch {
	case err != nil:
		l.WithError(err).Warn("state directory not on a shared mount: unmounts wait for the mount namespaces of containers being created")
	case res == sharedmount.Skipped:
		l.Warn("state directory not on a shared mount (images are mounted below it already; the next start with none mounted fixes it): unmounts wait for the mount namespaces of containers being created")
	case res != sharedmount.AlreadyShared:
		l.WithField("done", res.String()).Info("state directory put on a shared mount")
	}
}

// config is the policy in force.
func (s *Snapshotter) config() config.Config { return *s.cfg.Load() }

// SetConfig puts a reloaded policy in force: new images use it, every
// mounted image's window and reclaim policy change at once, and so do the
// pool's bounds. The state directory cannot change while the snapshotter
// runs.
func (s *Snapshotter) SetConfig(ctx context.Context, cfg config.Config) error {
	if cfg.Root != s.root {
		return fmt.Errorf("root %q: the state directory cannot change without a restart (it is %q)", cfg.Root, s.root)
	}
	s.cfg.Store(&cfg)
	s.pool.setPolicy(poolPolicyFrom(cfg))
	s.images.SetConfig(ctx, cfg)
	return nil
}

// Images is the record of the images in service and of their life: the
// daemon's hooks, status, reclaims and quota changes go through it.
func (s *Snapshotter) Images() *images.Manager { return s.images }

// MountedImage is the mounted image of snapshot id: its rw image, or its
// layer (layer true). ok is false when it has none in service.
func (s *Snapshotter) MountedImage(id string) (m *imagefs.Mounted, layer bool, ok bool) {
	return s.images.Mounted(id)
}

// PoolSize is what the pool of ready-made images holds.
type PoolSize struct {
	// Ready is how many images it holds now, mounted or not.
	Ready int
	// Mounted is how many of those wait mounted (pool.premount).
	Mounted int
	// Target is how many it aims at: the policy's [pool], following the
	// recent rate of Prepares.
	Target int
}

// Pool is what the pool of ready-made images holds now.
func (s *Snapshotter) Pool() PoolSize { return s.pool.size() }

// Root is the state directory.
func (s *Snapshotter) Root() string { return s.root }

func (s *Snapshotter) snapshotDir(id string) string {
	return filepath.Join(s.root, "snapshots", id)
}

func (s *Snapshotter) mountPath(id string) string {
	return filepath.Join(s.snapshotDir(id), mountDir)
}

// layerPath is a committed snapshot's content, as overlay's lowerdir.
func (s *Snapshotter) layerPath(id string) string {
	return filepath.Join(s.mountPath(id), imagefs.LayerDir)
}

func (s *Snapshotter) upperPath(id string) string {
	dirs, _ := s.overlayDirs(id)
	return filepath.Join(dirs, upperDir)
}

func (s *Snapshotter) workPath(id string) string {
	dirs, _ := s.overlayDirs(id)
	return filepath.Join(dirs, workDir)
}

// overlayDirs is where an active snapshot's upper and work dirs are: in
// its mounted rw image, or on the host for a layer's unpack (isUnpack,
// which unpack reports).
func (s *Snapshotter) overlayDirs(id string) (dirs string, unpack bool) {
	if s.isUnpack(id) {
		return filepath.Join(s.snapshotDir(id), unpackDir), true
	}
	return s.mountPath(id), false
}

// isUnpack reports an active snapshot the unpacker prepared for a layer
// (Prepare with containerd's snapshot.ref label) as snug prepares them: no
// rw image, its upper and work dirs in unpackDir on the host. snug's
// differ writes the layer's image from its tar and the dirs stay empty;
// what another applier writes into them is packed at Commit. A snapshot
// an older snug prepared for a layer has a rw image like any other.
func (s *Snapshotter) isUnpack(id string) bool {
	fi, err := os.Lstat(filepath.Join(s.snapshotDir(id), unpackDir))
	return err == nil && fi.IsDir()
}

// imagePath is the snapshot's image: none for a view or a layer's unpack.
func (s *Snapshotter) imagePath(id string, kind snapshots.Kind) string {
	switch kind {
	case snapshots.KindActive:
		if s.isUnpack(id) {
			return ""
		}
		return filepath.Join(s.snapshotDir(id), rwImage)
	case snapshots.KindCommitted:
		return filepath.Join(s.snapshotDir(id), layerImage)
	}
	return ""
}

// isNumericID reports whether name is a snapshot id (storage's ids are
// decimal sequence numbers).
func isNumericID(name string) bool {
	_, err := strconv.ParseUint(name, 10, 64)
	return err == nil
}
