package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/snugfs/snug/imagefs"
)

// checkUnmounted gives every writable image start-up has to mount (none of
// its loop devices survived: after a host reboot, or a stop of snug that
// unmounted what no container used) a read-only e2fsck before it is
// mounted (imagefs.CheckClean), unless snug itself unmounted it cleanly
// and the file is untouched since (imagefs.Sealed): a stop of snug with
// 300 idle images spent 26 s checking them at the next start. ext4 notices damage only where it reads; an
// image damaged while no kernel had it mounted is found here, before a
// container trips on it. The checks run a few at a time. It returns the
// damaged images' findings (wrapping imagefs.ErrDamaged) by snapshot id; a
// check that cannot run at all (e2fsck missing) is logged and the image
// mounted as before. Read-only layers are not checked: their commit
// synced them and unmounted them cleanly before they became layers, and
// nothing writes them; ext4 reports what damage a read meets.
func (s *Snapshotter) checkUnmounted(ctx context.Context, tbl *imagefs.MountTable, active []string) map[string]error {
	cfg := s.config().Fsck
	if !cfg.CheckAtStart {
		return nil
	}
	var todo []string
	for _, id := range active {
		image := filepath.Join(s.snapshotDir(id), rwImage)
		if _, err := os.Lstat(image); err != nil || s.quarantined(id) != "" {
			continue
		}
		if devs, err := tbl.Loops(image); err != nil || len(devs) > 0 {
			continue // alive: mounted, or in a container's overlay
		}
		if imagefs.Sealed(image) {
			continue // unmounted cleanly by snug, and untouched since
		}
		todo = append(todo, id)
	}
	if len(todo) == 0 {
		return nil
	}
	start := time.Now()
	found := map[string]error{}
	var mu sync.Mutex
	work := make(chan string)
	var wg sync.WaitGroup
	for range min(len(todo), runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
				err := imagefs.CheckClean(cctx, filepath.Join(s.snapshotDir(id), rwImage))
				cancel()
				switch {
				case errors.Is(err, imagefs.ErrDamaged):
					log.G(ctx).WithError(err).WithField("id", id).Error("start-up check: image damaged; the error monitor repairs it")
					mu.Lock()
					found[id] = err
					mu.Unlock()
				case err != nil:
					log.G(ctx).WithError(err).WithField("id", id).Warn("start-up check could not run; mounting the image unchecked")
				}
			}
		}()
	}
	for _, id := range todo {
		work <- id
	}
	close(work)
	wg.Wait()
	log.G(ctx).WithField("images", len(todo)).WithField("damaged", len(found)).WithField("took", time.Since(start)).Info("start-up check of unmounted images")
	return found
}
