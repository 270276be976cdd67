package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

// classFile holds the policy class an OCI annotation picked for a
// snapshot's image, so it survives a daemon restart.
const classFile = "class"

// imageState is what the daemon knows about one mounted rw image beyond
// what the kernel shows: its policy class, its container, and what was done
// to it. Counters are cumulative since the daemon started.
type imageState struct {
	id string
	m  *imagefs.Mounted

	// op is held while the image is repacked; Remove takes it, so an
	// image is never unmounted under a reclaim.
	op sync.Mutex

	mu          sync.Mutex // protects the fields below
	class       string
	container   string // the container last seen starting on it
	running     bool
	startedAt   time.Time
	lastGrow    time.Time
	lastReclaim time.Time
	queued      bool // a reclaim is scheduled
	removed     bool

	// annotated: the annotations of the container on this image were
	// applied (at a Mounts call; see applyStartAnnotations).
	annotated atomic.Bool

	counts counters
}

// Totals count what the daemon did to all images since it started,
// including images removed since.
type Totals = api.WindowCounts

// counters are an image's window counts, or the daemon's totals, updated
// as the watcher and the reclaims report.
type counters struct {
	grows, growBytes, reclaims, reclaimedBytes, trimmedBytes, windowFull, skipped atomic.Int64
}

func (c *counters) grew(n int64)      { c.grows.Add(1); c.growBytes.Add(n) }
func (c *counters) reclaimed(n int64) { c.reclaims.Add(1); c.reclaimedBytes.Add(n) }
func (c *counters) trimmed(n int64)   { c.trimmedBytes.Add(n) }
func (c *counters) full()             { c.windowFull.Add(1) }
func (c *counters) packed()           { c.skipped.Add(1) }

func (c *counters) load() api.WindowCounts {
	return api.WindowCounts{
		Grows: c.grows.Load(), GrowBytes: c.growBytes.Load(),
		Reclaims: c.reclaims.Load(), ReclaimedBytes: c.reclaimedBytes.Load(),
		TrimmedBytes: c.trimmedBytes.Load(), WindowFull: c.windowFull.Load(),
		ReclaimsSkipped: c.skipped.Load(),
	}
}

// Totals returns the daemon's cumulative counters.
func (s *Snapshotter) Totals() Totals { return s.totals.load() }

// track starts serving a mounted rw image: its state (serveActive hands
// it to the watcher once its headroom is free). Its
// class is in the class file: written from the snapshot label when the
// snapshot was made, rewritten when an OCI annotation picks another.
func (s *Snapshotter) track(ctx context.Context, id string, m *imagefs.Mounted) *imageState {
	// Read before the lock: imagesMu is never held across I/O.
	var class string
	if b, err := os.ReadFile(filepath.Join(s.snapshotDir(id), classFile)); err == nil {
		class = strings.TrimSpace(string(b))
	}
	s.imagesMu.Lock()
	st, ok := s.images[id]
	if !ok {
		st = &imageState{id: id, m: m, class: class}
		s.images[id] = st
	}
	o := s.mountObs
	s.imagesMu.Unlock()
	if !ok && o != nil {
		o.Mounted(ctx, id, false, m)
	}
	return st
}

// untrack forgets a removed image: it waits for a reclaim running on it,
// and drops a scheduled one.
func (s *Snapshotter) untrack(id string) {
	s.imagesMu.Lock()
	st := s.images[id]
	delete(s.images, id)
	o := s.mountObs
	s.imagesMu.Unlock()
	if st != nil && o != nil {
		o.Unmounting(id)
	}
	s.watcher.Remove(id)
	if st != nil {
		st.mu.Lock()
		st.removed = true
		st.mu.Unlock()
		st.op.Lock() // a running reclaim finishes first
		st.op.Unlock()
	}
}

func (s *Snapshotter) image(id string) *imageState {
	s.imagesMu.Lock()
	defer s.imagesMu.Unlock()
	return s.images[id]
}

func (s *Snapshotter) allImages() []*imageState {
	s.imagesMu.Lock()
	defer s.imagesMu.Unlock()
	out := make([]*imageState, 0, len(s.images))
	for _, st := range s.images {
		out = append(out, st)
	}
	return out
}

// classOf is the policy class of an image: the one it picked, or the base
// when it picked none or one the policy does not define (logged).
func (s *Snapshotter) classOf(ctx context.Context, st *imageState) config.Class {
	st.mu.Lock()
	name := st.class
	st.mu.Unlock()
	cl, ok := s.config().Class(name)
	if !ok {
		log.G(ctx).WithField("snapshot", st.id).WithField("class", name).Warn("unknown policy class; using the base policy")
	}
	return cl
}

func (s *Snapshotter) watchPolicy(ctx context.Context, st *imageState) imagefs.Policy {
	return windowPolicy(s.classOf(ctx, st))
}

func windowPolicy(cl config.Class) imagefs.Policy {
	return imagefs.Policy{
		Headroom:      int64(cl.Window.Headroom),
		HeadroomRatio: cl.Window.HeadroomRatio,
		Burst:         cl.Window.Burst,
		TrimAfter:     int64(cl.Reclaim.TrimAfter),
		IdleAfter:     cl.Reclaim.IdleAfter,
	}
}

// setClass records the class an OCI annotation picked for an image.
func (s *Snapshotter) setClass(ctx context.Context, st *imageState, class string) error {
	st.mu.Lock()
	same := st.class == class
	st.class = class
	st.mu.Unlock()
	if same {
		return nil
	}
	if err := writeClass(s.snapshotDir(st.id), class); err != nil {
		return err
	}
	s.watcher.SetPolicy(st.id, s.watchPolicy(ctx, st))
	return nil
}

// writeClass records a snapshot's class in its directory, atomically.
func writeClass(dir, class string) error {
	return writeMarker(filepath.Join(dir, classFile), class)
}

// observer turns what the watcher reports into counters, logs and idle
// reclaims.
func (s *Snapshotter) observer() imagefs.Observer {
	return imagefs.Observer{
		Grew: func(id string, n int64) {
			s.totals.grew(n)
			if st := s.image(id); st != nil {
				st.counts.grew(n)
				st.mu.Lock()
				st.lastGrow = time.Now()
				st.mu.Unlock()
			}
		},
		Trimmed: func(id string, n int64) {
			s.totals.trimmed(n)
			if st := s.image(id); st != nil {
				st.counts.trimmed(n)
			}
		},
		Full: func(id string, free, balloon int64, dir string) {
			s.totals.full()
			if st := s.image(id); st != nil {
				st.counts.full()
			}
			log.G(s.bgCtx).WithField("snapshot", id).WithField("free", free).WithField("balloon", balloon).WithField("dir", dir).
				Warn("window full before the quota: a writer may have seen ENOSPC (raise window.burst or window.headroom)")
		},
		Idle: func(id string) {
			if st := s.image(id); st != nil {
				s.scheduleReclaim(st, reasonIdle, 0)
			}
		},
		Failed: func(id string, err error) {
			if errors.Is(err, context.Canceled) {
				return
			}
			log.G(s.bgCtx).WithError(err).WithField("snapshot", id).Warn("window watcher")
		},
	}
}
