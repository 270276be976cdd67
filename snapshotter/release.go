package snapshotter

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"

	"github.com/snugfs/snug/imagefs"
)

// releaseWait bounds how long Close spends unmounting unused images, and
// releaseParallel how many it unmounts at once.
const (
	releaseWait     = 15 * time.Second
	releaseParallel = 16
)

// releaseUnused unmounts every image that nothing outside snug uses: no
// overlay has its layer or upper directory among its layers, and no other
// mount (a bind of a snapshot without parent, a propagated copy) shows its
// filesystem. Autoclear then detaches its loop device. An image a container
// runs on stays mounted, so the container keeps running while snug restarts;
// the next start mounts the others again (reconcile). Without this, a
// stopped daemon left every image mounted and attached, and removing its
// state directory (as containerd's conformance suite does after each case)
// deleted the image files under live mounts: loop devices pinned to deleted
// files, for good. An image whose file was deleted under its mount stays:
// the mount is its data's last copy. An image still attached after its
// unmount (its filesystem is in use in another mount namespace) is left to
// its last user and logged.
func (s *Snapshotter) releaseUnused(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, releaseWait)
	defer cancel()
	used, err := s.imagesInUse()
	if err != nil {
		log.G(ctx).WithError(err).Warn("closing: cannot tell which images are in use; leaving every image mounted")
		return
	}
	var (
		released atomic.Int64
		wg       sync.WaitGroup
		slots    = make(chan struct{}, releaseParallel)
	)
	for _, im := range s.images.List() {
		if used[im.ID] {
			continue
		}
		if _, err := os.Stat(im.M.Image); errors.Is(err, fs.ErrNotExist) {
			// The image file was deleted under the mount: the mounted
			// filesystem is the data's last copy. It stays, for an
			// operator to copy out (snug status says "deleted").
			log.G(ctx).WithField("snapshot", im.ID).Warn("closing: image file deleted; its filesystem is left mounted, the data's last copy")
			continue
		}
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer func() { <-slots; wg.Done() }()
			s.images.Unmounting(im.ID) // a reclaim in progress finishes first
			// Unmount waits for autoclear to detach the loop device:
			// tens of milliseconds each, so they run side by side.
			if err := im.M.Unmount(ctx); err != nil {
				log.G(ctx).WithError(err).WithField("snapshot", im.ID).Warn("closing: image left mounted")
				return
			}
			if !im.Layer {
				// A clean unmount by snug: the next start need not check
				// it, unless something writes it meanwhile.
				if err := imagefs.Seal(im.M.Image); err != nil {
					log.G(ctx).WithError(err).WithField("snapshot", im.ID).Warn("closing: the image will be checked at the next start")
				}
			}
			released.Add(1)
		}()
	}
	wg.Wait()
	log.G(ctx).WithField("released", released.Load()).WithField("in use", len(used)).Info("closing: unused images unmounted")
}

// imagesInUse lists the snapshots whose images a mount other than snug's own
// mount of the image refers to.
func (s *Snapshotter) imagesInUse() (map[string]bool, error) {
	tbl, err := imagefs.ReadMountTable()
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	for _, ov := range tbl.Overlays() {
		if id := s.SnapshotOfUpper(ov.Upper); ov.Upper != "" && id != "" {
			used[id] = true
		}
		for _, dir := range ov.Lowers {
			if id := s.snapshotOfLayer(dir); id != "" {
				used[id] = true
			}
		}
	}
	for _, im := range s.images.List() {
		dir := im.M.Dir
		if real, err := filepath.EvalSymlinks(dir); err == nil {
			dir = real
		}
		for _, e := range tbl.OnDevice(im.M.Device) { // none: detached already
			if e.FSType != "overlay" && e.Point != dir {
				used[im.ID] = true
			}
		}
	}
	return used, nil
}
