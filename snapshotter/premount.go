package snapshotter

import (
	"context"
	"os"
	"path/filepath"

	"github.com/containerd/log"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/failpoint"
)

// Premounted images. Attaching a loop device, mounting ext4 on it and
// freeing the window's headroom are most of what Prepare costs once the
// image is made (a few milliseconds of each `ctr run`). With pool.premount
// the pool does that ahead of need: its images wait mounted detached
// (imagefs.MountDetached: in no mount table, so no container's copy of the
// host's mounts holds one), in root/pool/mounted, and Prepare renames the
// file into the snapshot and moves the mount onto the snapshot's mount
// point (imagefs.Mounted.Place).
//
// A detached mount lives as long as the daemon's descriptor: when the
// daemon dies, the kernel unmounts it and autoclear detaches its loop
// device, so a crash leaves no mount and no device, only files in
// root/pool/mounted, which start-up deletes (they were mounted, so they are
// not pristine).

// mountedSubdir holds the premounted images, under the pool's directory.
const mountedSubdir = "mounted"

// premounted is a pool image waiting mounted.
type premounted struct {
	path string // in the pool's mounted directory
	m    *imagefs.Mounted
	opts imagefs.MountOptions // what it was mounted with
}

func (p *pool) mountedDir() string { return filepath.Join(p.dir, mountedSubdir) }

// premount mounts the image at path (in the mounted directory) detached,
// frees its headroom and adds it to the ready ones; on failure the image is
// deleted. made says the pool made the image a moment ago (no loop device
// can hold it: imagefs.MountOptions.New).
func (p *pool) premount(ctx context.Context, path string, pol *poolPolicy, made bool) error {
	o := pol.mount
	o.New = made
	m, err := imagefs.MountDetached(ctx, path, o)
	if err == nil {
		_, err = m.EnsureFree(ctx, pol.headroom)
		if err != nil {
			m.Unmount(ctx)
		}
	}
	if err != nil {
		os.Remove(path)
		return err
	}
	failpoint.Inject("pool-premounted")
	p.mu.Lock()
	p.mounted = append(p.mounted, &premounted{path: path, m: m, opts: pol.mount})
	p.mu.Unlock()
	return nil
}

// premountReady mounts ready unmounted images (made before pool.premount
// was turned on, or by an earlier start), several at once.
func (p *pool) premountReady(ctx context.Context, names []string, pol *poolPolicy) bool {
	next := make(chan string, len(names))
	for _, name := range names {
		next <- name
	}
	close(next)
	return p.parallel(ctx, len(names), func() error {
		name := <-next
		path := filepath.Join(p.mountedDir(), name)
		// Taken like a Prepare takes one: a rename, which only one wins.
		if err := os.Rename(filepath.Join(p.dir, name), path); err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		return p.premount(ctx, path, pol, false)
	})
}

// takeMounted moves a premounted image mounted with mo to dst and returns
// its detached mount, or nil when there is none. Ones mounted with other
// options (a reload changed them) are dropped on the way.
func (p *pool) takeMounted(ctx context.Context, dst string, mo imagefs.MountOptions) *imagefs.Mounted {
	for {
		pm := p.popMounted()
		if pm == nil {
			return nil
		}
		if pm.opts != mo {
			p.discard(ctx, pm)
			continue
		}
		if err := os.Rename(pm.path, dst); err != nil {
			log.G(ctx).WithError(err).WithField("image", pm.path).Warn("cannot take a premounted image from the pool")
			p.discard(ctx, pm)
			continue
		}
		return pm.m
	}
}

// popMounted removes the newest premounted image from the ready ones and
// returns it, or nil.
func (p *pool) popMounted() *premounted {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.mounted)
	if n == 0 {
		return nil
	}
	pm := p.mounted[n-1]
	p.mounted = p.mounted[:n-1]
	return pm
}

// mountedCount is how many premounted images are ready.
func (p *pool) mountedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.mounted)
}

// dropMounted discards the premounted images the policy no longer wants:
// all of them when pool.premount is off, else those mounted with other
// options.
func (p *pool) dropMounted(ctx context.Context, pol *poolPolicy) {
	p.mu.Lock()
	var keep, drop []*premounted
	for _, pm := range p.mounted {
		if pol.bounds.Premount && pm.opts == pol.mount {
			keep = append(keep, pm)
		} else {
			drop = append(drop, pm)
		}
	}
	p.mounted = keep
	p.mu.Unlock()
	for _, pm := range drop {
		p.discard(ctx, pm)
	}
}

// discard unmounts a premounted image and deletes it.
func (p *pool) discard(ctx context.Context, pm *premounted) {
	if err := pm.m.Unmount(context.WithoutCancel(ctx)); err != nil {
		log.G(ctx).WithError(err).WithField("image", pm.path).Warn("cannot unmount a premounted pool image")
	}
	if err := os.Remove(pm.path); err != nil && !os.IsNotExist(err) {
		log.G(ctx).WithError(err).WithField("image", pm.path).Warn("cannot delete a premounted pool image")
	}
}

// close unmounts the premounted images (after wait), as the kernel does
// when the daemon dies; keep false also deletes them, keep true leaves the
// files for start-up to delete, as a crash does.
func (p *pool) close(ctx context.Context, keep bool) {
	for pm := p.popMounted(); pm != nil; pm = p.popMounted() {
		if keep {
			pm.m.Unmount(ctx)
			continue
		}
		p.discard(ctx, pm)
	}
}
