package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/log"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

// File names inside a snapshot's directory, root/snapshots/<id>/.
const (
	rwImage    = "rw.img"    // an active snapshot's thin writable image
	layerImage = "layer.img" // a committed snapshot's read-only layer image
	mountDir   = "mnt"       // where the snapshot's image is mounted
	emptyDir   = "empty"     // the content of a view without parent
	upperDir   = "upper"     // overlay upper dir, inside the mounted rw image
	workDir    = "work"      // overlay work dir, inside the mounted rw image
	newPrefix  = "new-"      // a snapshot directory still being built
)

// Snapshotter is containerd's snapshots.Snapshotter on thin ext4 images.
// It is safe for concurrent use.
type Snapshotter struct {
	root string
	ms   *storage.MetaStore
	pol  policy
	pool *pool

	// keepCtx ends every window keeper when the snapshotter closes.
	keepCtx  context.Context
	stopKeep context.CancelFunc

	// keepersMu protects keepers: one window keeper per mounted rw image,
	// by snapshot id. It is never held across I/O.
	keepersMu sync.Mutex
	keepers   map[string]context.CancelFunc

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
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("snapshotter metadata in %s: %w", root, err)
	}
	pol := policyFrom(cfg)
	pl, err := newPool(root, pol.create)
	if err != nil {
		ms.Close()
		return nil, fmt.Errorf("image pool in %s: %w", root, err)
	}
	keepCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s := &Snapshotter{
		root:     root,
		ms:       ms,
		pol:      pol,
		pool:     pl,
		keepCtx:  keepCtx,
		stopKeep: stop,
		keepers:  map[string]context.CancelFunc{},
	}
	if err := s.reconcile(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("reconcile %s: %w", root, err)
	}
	s.pool.refill(keepCtx)
	return s, nil
}

// Close stops the window keepers and the pool's refill and closes the
// metadata store. It leaves
// every image mounted: containers keep running while snug restarts.
func (s *Snapshotter) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.stopKeep()
		s.pool.wait()
		err = s.ms.Close()
	})
	return err
}

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
	return filepath.Join(s.mountPath(id), upperDir)
}

func (s *Snapshotter) workPath(id string) string {
	return filepath.Join(s.mountPath(id), workDir)
}

func (s *Snapshotter) imagePath(id string, kind snapshots.Kind) string {
	switch kind {
	case snapshots.KindActive:
		return filepath.Join(s.snapshotDir(id), rwImage)
	case snapshots.KindCommitted:
		return filepath.Join(s.snapshotDir(id), layerImage)
	}
	return ""
}

// startKeeper runs the window keeper of a mounted rw image until the image
// is unmounted or the snapshotter closes.
func (s *Snapshotter) startKeeper(ctx context.Context, id string, m *imagefs.Mounted) {
	s.keepersMu.Lock()
	defer s.keepersMu.Unlock()
	if _, ok := s.keepers[id]; ok {
		return
	}
	kctx, cancel := context.WithCancel(s.keepCtx)
	s.keepers[id] = cancel
	go func() {
		err := imagefs.Keep(kctx, m, s.pol.window, nil)
		if err != nil && !errors.Is(err, context.Canceled) {
			log.G(ctx).WithError(err).WithField("snapshot", id).Warn("window keeper stopped")
		}
	}()
}

func (s *Snapshotter) stopKeeper(id string) {
	s.keepersMu.Lock()
	defer s.keepersMu.Unlock()
	if cancel, ok := s.keepers[id]; ok {
		cancel()
		delete(s.keepers, id)
	}
}

// isNumericID reports whether name is a snapshot id (storage's ids are
// decimal sequence numbers).
func isNumericID(name string) bool {
	_, err := strconv.ParseUint(name, 10, 64)
	return err == nil
}
