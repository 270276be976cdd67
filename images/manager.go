package images

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/traffic"
	"github.com/snugfs/snug/internal/units"
)

// Snapshots is what a Manager asks of the snapshotter: what only its
// metadata store and its directory layout know.
type Snapshots interface {
	// SnapshotID is the id of the snapshot named key.
	SnapshotID(ctx context.Context, key string) (string, error)
	// Names maps the id of every snapshot to its name.
	Names(ctx context.Context) (map[string]string, error)
	// Describe lists the image of every active and committed snapshot as
	// the kernel and the files show it (ImageStatus without Activity).
	Describe(ctx context.Context) ([]api.ImageStatus, error)
	// SnapshotOfUpper maps an overlay upper dir to the snapshot whose rw
	// image holds it, or "".
	SnapshotOfUpper(dir string) string
}

// MountObserver learns of every image put into service and of every image
// about to be unmounted: the error monitor watches each. It also learns of
// the images start-up could not mount (a damaged superblock, say).
type MountObserver interface {
	Mounted(ctx context.Context, id string, layer bool, m *imagefs.Mounted)
	Unmounting(id string)
	MountFailed(ctx context.Context, id string, layer bool, err error)
}

// unmountable is an image start-up could not mount.
type unmountable struct {
	layer bool
	err   error
}

// Manager is the daemon's record of every mounted image and the life of
// each rw image. It is safe for concurrent use.
type Manager struct {
	snaps   Snapshots
	cfg     atomic.Pointer[config.Config]
	traffic *traffic.Meter

	// bgCtx ends the watcher and scheduled reclaims at Close; bg counts
	// them.
	bgCtx  context.Context
	stopBg context.CancelFunc
	bg     sync.WaitGroup

	// watcher keeps every mounted rw image's window ahead of its data.
	watcher *imagefs.Watcher
	// reclaimSlots bounds the repacks running at once.
	reclaimSlots chan struct{}
	totals       counters

	// mu protects images (every rw image in service, by snapshot id),
	// layers (every layer in service), observer and unmountable. It is
	// never held across I/O.
	mu          sync.Mutex
	images      map[string]*imageState
	layers      map[string]*imagefs.Mounted
	observer    MountObserver
	unmountable map[string]unmountable
}

// New makes the Manager of snaps under the policy cfg. tr is the
// snapshotter's traffic: container starts and stops mark it too, and
// scheduled reclaims wait for a lull in it. Start runs its window keeper.
// Background work logs through ctx's logger and ends at Close.
func New(ctx context.Context, snaps Snapshots, cfg config.Config, tr *traffic.Meter) *Manager {
	bgCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	g := &Manager{
		snaps:        snaps,
		traffic:      tr,
		bgCtx:        bgCtx,
		stopBg:       stop,
		reclaimSlots: make(chan struct{}, 2),
		images:       map[string]*imageState{},
		layers:       map[string]*imagefs.Mounted{},
		unmountable:  map[string]unmountable{},
	}
	g.cfg.Store(&cfg)
	g.watcher = imagefs.NewWatcher(cfg.Window.CheckInterval, g.watchObserver())
	return g
}

// Start runs the window keeper of the images in service, until Close.
func (g *Manager) Start() {
	g.bg.Add(1)
	go func() {
		defer g.bg.Done()
		g.watcher.Run(g.bgCtx)
	}()
}

// Close stops the window keeper and drops scheduled reclaims; a reclaim or
// a quota change running finishes first. The images stay mounted and in
// the record: the snapshotter decides what to unmount.
func (g *Manager) Close() {
	g.stopBg()
	g.bg.Wait()
	for _, st := range g.allImages() {
		st.op.Lock()
		st.op.Unlock()
	}
}

// config is the policy in force.
func (g *Manager) config() config.Config { return *g.cfg.Load() }

// SetConfig puts a reloaded policy in force: every mounted image's window
// and reclaim policy, and its loop device's I/O mode, change at once.
func (g *Manager) SetConfig(ctx context.Context, cfg config.Config) {
	g.cfg.Store(&cfg)
	g.watcher.SetInterval(cfg.Window.CheckInterval)
	for _, st := range g.allImages() {
		g.watcher.SetPolicy(st.id, g.watchPolicy(ctx, st))
		g.applyIO(ctx, st)
	}
}

// Totals returns the daemon's cumulative counters.
func (g *Manager) Totals() Totals { return g.totals.load() }

// Serve puts a mounted rw image into service: its state (its class read
// from the class file in the snapshot's directory dir), the observer told,
// its loop device in its class's I/O mode, its headroom made free and its
// window keeper started. Once an image is
// served, the watcher grows its window ahead of its data.
func (g *Manager) Serve(ctx context.Context, id, dir string, m *imagefs.Mounted) error {
	// The window starts with its headroom free, whatever ext4's own
	// metadata took of the initial window; the keeper takes over after.
	st := g.track(ctx, id, dir, m)
	g.applyIO(ctx, st)
	_, err := m.EnsureFree(ctx, int64(g.classOf(ctx, st).Window.Headroom))
	// Watched only now: a fresh image's first window may be all ext4
	// metadata, which the watcher would count as a window found full.
	g.watcher.Add(id, m, g.watchPolicy(ctx, st))
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", id, err)
	}
	return nil
}

// track records a mounted rw image (once) and tells the observer.
func (g *Manager) track(ctx context.Context, id, dir string, m *imagefs.Mounted) *imageState {
	class := ReadClass(dir) // before the lock: mu is never held across I/O
	g.mu.Lock()
	st, ok := g.images[id]
	if !ok {
		st = &imageState{id: id, dir: dir, m: m, class: class}
		g.images[id] = st
	}
	o := g.observer
	g.mu.Unlock()
	if !ok && o != nil {
		o.Mounted(ctx, id, false, m)
	}
	return st
}

// ServeLayer puts a mounted read-only layer image into service.
func (g *Manager) ServeLayer(ctx context.Context, id string, m *imagefs.Mounted) {
	g.mu.Lock()
	g.layers[id] = m
	o := g.observer
	g.mu.Unlock()
	if o != nil {
		o.Mounted(ctx, id, true, m)
	}
}

// Unmounting takes snapshot id's image (rw or layer) out of service before
// the snapshotter unmounts it: the observer is told, the window keeper
// stops, a scheduled reclaim is dropped and a running one (or a quota
// change) finishes first.
func (g *Manager) Unmounting(id string) {
	g.mu.Lock()
	st := g.images[id]
	delete(g.images, id)
	_, layer := g.layers[id]
	delete(g.layers, id)
	o := g.observer
	g.mu.Unlock()
	if (st != nil || layer) && o != nil {
		o.Unmounting(id)
	}
	g.watcher.Remove(id)
	if st != nil {
		st.mu.Lock()
		st.removed = true
		st.mu.Unlock()
		st.op.Lock() // a running reclaim finishes first
		st.op.Unlock()
	}
}

// MountFailed records an image the snapshotter could not mount at
// start-up, for the observer (told at once, or when it comes).
func (g *Manager) MountFailed(ctx context.Context, id string, layer bool, err error) {
	g.mu.Lock()
	o := g.observer
	if o == nil {
		g.unmountable[id] = unmountable{layer: layer, err: err}
	}
	g.mu.Unlock()
	if o != nil {
		o.MountFailed(ctx, id, layer, err)
	}
}

// Observe makes o the mount observer and tells it of every image in
// service already, and of those start-up could not mount.
func (g *Manager) Observe(ctx context.Context, o MountObserver) {
	g.mu.Lock()
	g.observer = o
	now := g.listLocked()
	failed := g.unmountable
	g.unmountable = map[string]unmountable{}
	g.mu.Unlock()
	for _, i := range now {
		o.Mounted(ctx, i.ID, i.Layer, i.M)
	}
	for id, f := range failed {
		o.MountFailed(ctx, id, f.layer, f.err)
	}
}

// Mounted is the image of snapshot id in service: its rw image, or its
// layer (layer true). ok is false when it has none.
func (g *Manager) Mounted(id string) (m *imagefs.Mounted, layer bool, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if st, found := g.images[id]; found {
		return st.m, false, true
	}
	if m, found := g.layers[id]; found {
		return m, true, true
	}
	return nil, false, false
}

// InService is an image in service.
type InService struct {
	ID    string
	M     *imagefs.Mounted
	Layer bool
}

// List lists the images in service: the rw images, then the layers (an
// unused rw image goes before the layers below it).
func (g *Manager) List() []InService {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.listLocked()
}

func (g *Manager) listLocked() []InService {
	out := make([]InService, 0, len(g.images)+len(g.layers))
	for id, st := range g.images {
		out = append(out, InService{ID: id, M: st.m})
	}
	for id, m := range g.layers {
		out = append(out, InService{ID: id, M: m, Layer: true})
	}
	return out
}

// Annotated reports whether the annotations of the container on rw image
// id were applied already (the snapshotter applies them once, at the
// first Mounts call for its root); false for an image not in service.
func (g *Manager) Annotated(id string) bool {
	st := g.image(id)
	return st != nil && st.annotated.Load()
}

// SetAnnotated records that they were.
func (g *Manager) SetAnnotated(id string) {
	if st := g.image(id); st != nil {
		st.annotated.Store(true)
	}
}

func (g *Manager) image(id string) *imageState {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.images[id]
}

func (g *Manager) allImages() []*imageState {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]*imageState, 0, len(g.images))
	for _, st := range g.images {
		out = append(out, st)
	}
	return out
}

// watchObserver turns what the watcher reports into counters, logs and
// idle reclaims.
func (g *Manager) watchObserver() imagefs.Observer {
	return imagefs.Observer{
		Grew: func(id string, n int64) {
			g.totals.grew(n)
			if st := g.image(id); st != nil {
				st.counts.grew(n)
				st.mu.Lock()
				st.lastGrow = time.Now()
				st.mu.Unlock()
			}
		},
		Trimmed: func(id string, n int64) {
			g.totals.trimmed(n)
			if st := g.image(id); st != nil {
				st.counts.trimmed(n)
			}
		},
		Full: func(id string, f imagefs.FullWindow) {
			g.totals.full()
			if st := g.image(id); st != nil {
				st.counts.full()
			}
			log.G(g.bgCtx).WithFields(log.Fields{
				"snapshot": id, "free": f.Free, "balloon": f.Balloon, "dir": f.Dir,
				"rate": units.FormatBytes(int64(f.Rate)) + "/s", "headroom": units.FormatBytes(f.Headroom),
				"growing": f.Growing, "last_grow": f.LastGrow,
			}).Warn("window full before the quota: a writer may have seen ENOSPC (raise window.burst or window.headroom)")
		},
		Idle: func(id string) {
			if st := g.image(id); st != nil {
				g.scheduleReclaim(st, reasonIdle, 0)
			}
		},
		Failed: func(id string, err error) {
			if errors.Is(err, context.Canceled) {
				return
			}
			log.G(g.bgCtx).WithError(err).WithField("snapshot", id).Warn("window watcher")
		},
		FlushesDropped: func(id, device string, err error) {
			g.totals.droppedFlushes()
			if st := g.image(id); st != nil {
				st.counts.droppedFlushes()
			}
			if err != nil {
				log.G(g.bgCtx).WithError(err).WithFields(log.Fields{"snapshot": id, "device": device}).
					Error("the image's loop device drops cache flushes: fsyncs in its container do not reach the disk")
			}
		},
	}
}
