package fsck

import (
	"context"
	"errors"
	"fmt"
)

// pendingDelete is the deletion of an incident's stopped tasks, running
// in the background.
type pendingDelete struct {
	done chan struct{}
	err  error // set before done is closed
}

// deleteTasks starts deleting, in the background, the tasks stopAll
// stopped. A task's delete is containerd's slowest call in a repair
// under load (the shim's runc delete, the root's unmount, the shim's
// exit, behind every container being created: 0.1-2.7 s measured), and
// the repair needs only the root's unmount, which its own unmount of the
// image waits for (imagefs.WaitDetached). The restart and the quarantine
// wait for the delete to end (awaitDeletes). A daemon restarted meanwhile
// has none pending and starts it again: Delete is idempotent. Started
// other than right after the stop (afterStop false: by a restarted
// daemon), Delete first makes sure the task it finds is not one made
// since.
func (d *Doctor) deleteTasks(ctx context.Context, inc *Incident, afterStop bool) {
	if d.ctrs == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.deletes[inc.ID] != nil {
		return
	}
	if d.deletes == nil {
		d.deletes = map[string]*pendingDelete{}
	}
	var refs []ContainerRef
	for _, c := range inc.Containers {
		if c.Stopped && !c.Restarted {
			refs = append(refs, c)
		}
	}
	p := &pendingDelete{done: make(chan struct{})}
	d.deletes[inc.ID] = p
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(p.done)
		var errs []error
		for i := range refs {
			c := &refs[i]
			if err := retry(ctx, containerdAttempts, retryPause, func() error { return d.ctrs.Delete(ctx, c, afterStop) }); err != nil {
				errs = append(errs, fmt.Errorf("container %s/%s: delete its task: %w", c.Namespace, c.ID, err))
			}
		}
		p.err = errors.Join(errs...)
	}()
}

// awaitDeletes waits for the deletion of the incident's stopped tasks,
// starting it if none is pending, and returns its error.
func (d *Doctor) awaitDeletes(ctx context.Context, inc *Incident) error {
	d.deleteTasks(ctx, inc, false)
	p := d.pending(inc)
	if p == nil {
		return nil // no containerd
	}
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// deleteFailed returns the error of a deletion that ended and failed: the
// roots it should have unmounted hold the image, so waiting for it to be
// free is pointless.
func (d *Doctor) deleteFailed(inc *Incident) error {
	p := d.pending(inc)
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// pending is the incident's deletion, nil before deleteTasks.
func (d *Doctor) pending(inc *Incident) *pendingDelete {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.deletes[inc.ID]
}
