package snapshotter

import (
	"context"
	"runtime"
	"sync"
	"time"

	"github.com/containerd/log"
)

// Removals run in the background. containerd's garbage collector removes
// snapshots while it holds its snapshotter's lock, which every Prepare,
// Mounts and View of that snapshotter also takes: whatever Remove costs, a
// container starting meanwhile may wait for. Unmounting an image and
// deleting it took 12-28 ms a snapshot, a burst's garbage collection
// removes its snapshots one after another, and a Remove of an image still
// in use waited up to 5 s for its loop device to go. So Remove only
// records the removal and returns; the image is unmounted and deleted by
// a worker here. The record goes first, as before: a crash before the
// deletion leaves a directory whose id is not recorded, which start-up
// deletes (cleanup). Cleanup, which containerd's collector calls once it
// has let go of its lock, waits for the removals in flight, so a
// collection (`ctr images rm --sync`) still ends with the space given back.

// removeParallel bounds the deletions that run at once: each is an unmount
// and the deletion of a sparse file, mostly waiting for the disk.
var removeParallel = max(2, runtime.NumCPU())

// removals tracks the snapshot directories being deleted in the
// background.
type removals struct {
	slots chan struct{}

	mu      sync.Mutex
	pending map[string]struct{} // directories queued or being deleted
	idle    chan struct{}       // closed while nothing is pending
	closed  bool                // no more workers: deletions run at once
}

func newRemovals() *removals {
	idle := make(chan struct{})
	close(idle)
	return &removals{slots: make(chan struct{}, removeParallel), pending: map[string]struct{}{}, idle: idle}
}

// add marks dir pending, for a worker to delete; queued false if it
// already was pending, closed true (and nothing done) once close was called.
func (r *removals) add(dir string) (queued, closed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false, true
	}
	if _, ok := r.pending[dir]; ok {
		return false, false
	}
	if len(r.pending) == 0 {
		r.idle = make(chan struct{})
	}
	r.pending[dir] = struct{}{}
	return true, false
}

// close takes no more workers and waits for those running: a pending
// directory is a worker's until done.
func (r *removals) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.wait(context.Background())
}

// done marks dir no longer pending, its worker ended.
func (r *removals) done(dir string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pending, dir)
	if len(r.pending) == 0 {
		close(r.idle)
	}
}

// has reports whether dir is pending.
func (r *removals) has(dir string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.pending[dir]
	return ok
}

// wait waits until nothing is pending (removals added meanwhile too), or
// ctx ends. It reports whether anything was pending when it was called.
func (r *removals) wait(ctx context.Context) (bool, error) {
	r.mu.Lock()
	idle, busy := r.idle, len(r.pending) > 0
	r.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return busy, ctx.Err()
		case <-idle:
		}
		r.mu.Lock()
		idle = r.idle
		empty := len(r.pending) == 0
		r.mu.Unlock()
		if empty {
			return busy, nil
		}
	}
}

// removeLater deletes the snapshot directory dir in the background
// (removeDir), at most removeParallel at once. Once the snapshotter is
// closing, it deletes at once instead.
func (s *Snapshotter) removeLater(ctx context.Context, dir string) {
	queued, closed := s.removing.add(dir)
	if closed {
		s.removeNow(ctx, dir)
	}
	if !queued {
		return
	}
	go func() {
		defer s.removing.done(dir)
		s.removing.slots <- struct{}{}
		defer func() { <-s.removing.slots }()
		// Not ended by Close: it waits for the deletions in flight.
		s.removeNow(context.WithoutCancel(s.bgCtx), dir)
	}()
}

// removeNow deletes a removed snapshot's directory and logs the outcome;
// one it cannot delete yet (its image still in use) stays for Cleanup or
// the next start-up.
func (s *Snapshotter) removeNow(ctx context.Context, dir string) {
	start := time.Now()
	l := log.G(ctx).WithField("path", dir)
	if err := s.removeDir(ctx, dir); err != nil {
		l.WithError(err).Warn("snapshot removed; its image is deleted later")
		return
	}
	l.WithField("took", time.Since(start)).Debug("removed snapshot deleted")
}
