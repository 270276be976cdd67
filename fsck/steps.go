package fsck

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

// The work of each step of the pipeline (table.go).

// freezeAll pauses the running containers on the image.
func (d *Doctor) freezeAll(ctx context.Context, inc *Incident, s *Step) error {
	return d.eachContainer(ctx, inc, s, func(c *ContainerRef) (bool, error) {
		if c.Status != "running" || c.Paused {
			return false, nil
		}
		if err := d.ctrs.Pause(ctx, c); err != nil {
			return false, err
		}
		c.Paused = true
		return true, nil
	})
}

// restartAll starts again the containers the stop step stopped.
func (d *Doctor) restartAll(ctx context.Context, inc *Incident, s *Step) error {
	logDir := filepath.Join(d.store.dir, inc.ID)
	// A container has one task: the stopped one goes first.
	start := time.Now()
	if err := d.awaitDeletes(ctx, inc); err != nil {
		s.Result = "0"
		return err
	}
	waited := time.Since(start)
	defer func() {
		// Under load the restart is containerd's work: say which part.
		if s.Result != "" && s.Result != "0" {
			s.Detail = joinDetail(s.Detail, fmt.Sprintf("waited %v for the stopped tasks' delete, started again in %v",
				waited.Round(time.Millisecond), (time.Since(start)-waited).Round(time.Millisecond)))
		}
	}()
	return d.eachContainer(ctx, inc, s, func(c *ContainerRef) (bool, error) {
		if !c.Stopped || c.Restarted || c.ManagedBy != "" {
			// A CRI container's restart is the kubelet's: a task
			// started behind its back would run unseen by it.
			return false, nil
		}
		if err := d.ctrs.Start(ctx, c, logDir); err != nil {
			return false, err
		}
		c.Restarted = true
		d.counts.restarted.Add(1)
		return true, nil
	})
}

// containerdAttempts bounds the tries of a call to containerd that
// failed: containerd restarting, or a shim's ttrpc connection closing as
// its task exits ("ttrpc: closed"), is no reason to quarantine an image.
const containerdAttempts = 3

// retryPause is the pause before the second try; it grows with each.
var retryPause = 500 * time.Millisecond

// retry runs fn until it succeeds, up to attempts times, pausing pause
// before the second try and a pause more before each next one, and
// returns its last error.
func retry(ctx context.Context, attempts int, pause time.Duration, fn func() error) error {
	var err error
	for attempt := range attempts {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return errors.Join(err, ctx.Err())
			case <-time.After(time.Duration(attempt) * pause):
			}
		}
		if err = fn(); err == nil {
			return nil
		}
	}
	return err
}

// locate finds the containers on the incident's image.
func (d *Doctor) locate(ctx context.Context, inc *Incident, s *Step) error {
	return retry(ctx, containerdAttempts, retryPause, func() error {
		cs, err := d.ctrs.Using(ctx, inc.Snapshot, inc.Layer)
		if err == nil {
			inc.Containers = cs
			s.Result = fmt.Sprintf("%d", len(cs))
		}
		return err
	})
}

// check runs the online check. Its outcome is advice: damage, a check
// that cannot finish (e2fsck -n exits 8 or 12 where it declines to
// salvage, a timeout, a crash) and an image ext4 stopped all lead to the
// offline repair, whose verifying check decides.
func (d *Doctor) check(ctx context.Context, inc *Incident, s *Step, pol config.FsckPolicy) Outcome {
	m, _, ok := d.images.MountedImage(inc.Snapshot)
	if !ok {
		s.Detail = "the image is not mounted"
		return NotMounted
	}
	if d.stoppedForRepair(inc, pol, false) {
		// Whatever e2fsck -n says, the repair follows: an online check
		// would only delay it. The repair's own e2fsck records the damage.
		s.Detail = "not run: ext4 stopped the filesystem read-only after the error; the offline repair checks it"
		return ReadOnly
	}
	// The container is frozen while e2fsck reads: it runs first.
	res, err := d.scrub(imagefs.Urgent(ctx), m, pol)
	inc.Check = &res
	s.Detail = fmt.Sprintf("%s, frozen %v, e2fsck %v", res.Method, res.Frozen.Round(time.Millisecond), res.Duration.Round(time.Millisecond))
	switch {
	case err != nil:
		s.Detail = joinDetail(s.Detail, err.Error())
		return Inconclusive
	case res.Failed():
		s.Detail = joinDetail(s.Detail, fmt.Sprintf("e2fsck -n exit %d: %s", res.ExitCode, lastLine(res.Output)))
		return Inconclusive
	case !res.Clean():
		return Damaged
	case readOnly(inc):
		return ReadOnly
	}
	return Clean
}

// stoppedForRepair reports whether the incident's writable image is one
// ext4 stopped read-only after the error (errors=remount-ro, the usual
// case) under the repair policy: then every outcome of the online check
// leads to the offline repair, so the freeze and the check are skipped.
//
// ext4 reports the error (fanotify, sysfs) a moment before it stops the
// filesystem: it aborts the journal and writes the superblock first. For
// an incident that an ext4 report opened, a patient caller (the plan,
// before the freeze) therefore waits for the answer for up to stopWait;
// any other source (a check, start-up), and the check step, which comes
// after that wait, ask once.
func (d *Doctor) stoppedForRepair(inc *Incident, pol config.FsckPolicy, patient bool) bool {
	if inc.Layer || pol.Action != "repair" {
		return false
	}
	m, layer, ok := d.images.MountedImage(inc.Snapshot)
	if !ok || layer {
		return false
	}
	wait := time.Duration(0)
	if patient && (inc.Source == ModeFanotify || inc.Source == ModeSysfs) {
		wait = stopWait
	}
	for end := time.Now().Add(wait); ; time.Sleep(5 * time.Millisecond) {
		if d.tools.stopped(m) {
			return true
		}
		if !time.Now().Before(end) {
			return false
		}
	}
}

// stopWait bounds the wait for ext4 to stop an image it reported an error
// on: a superblock write, milliseconds.
var stopWait = 250 * time.Millisecond

// repair runs e2fsck on the unmounted image, then a read-only check to
// prove it clean. When errors remain it tries once more from the first
// backup superblock (a primary superblock e2fsck accepts but that is
// wrong, say).
func (d *Doctor) repair(ctx context.Context, inc *Incident, s *Step, pol config.FsckPolicy) error {
	// An image busy otherwise (a container's root mount not yet gone
	// after its task's delete, a lock held by another operation) passes:
	// Offline then serves the image again, and the repair waits and
	// retries. Offline itself waits out a filesystem that lives on after
	// its unmount in a mount namespace a container being created copied.
	// The stopped tasks' roots go with their deletion: running since the
	// stop step, or started again here after a daemon restart.
	d.deleteTasks(ctx, inc, false)
	var err error
	for attempt := range repairBusyAttempts {
		if attempt > 0 {
			if derr := d.deleteFailed(inc); derr != nil {
				return fmt.Errorf("%w; %w", err, derr)
			}
			time.Sleep(repairBusyBackoff)
		}
		var (
			ran                 bool
			start               = time.Now()
			unmounted, repaired time.Duration
		)
		err = d.images.Offline(ctx, inc.Snapshot, func(image string) error {
			ran = true
			unmounted = time.Since(start)
			defer func() { repaired = time.Since(start) }()
			return d.repairOffline(ctx, inc, s, pol, image)
		})
		if ran {
			// Where the step's time went: the unmount (with the wait for
			// the filesystem to end), e2fsck's runs, serving it again.
			s.Detail = joinDetail(s.Detail, fmt.Sprintf("unmounted in %v, repaired and verified in %v, served again in %v",
				unmounted.Round(time.Millisecond), (repaired-unmounted).Round(time.Millisecond), (time.Since(start)-repaired).Round(time.Millisecond)))
		}
		if ran || !errors.Is(err, imagefs.ErrBusy) && !errors.Is(err, unix.EBUSY) {
			return err
		}
		s.Detail = joinDetail(s.Detail, fmt.Sprintf("busy (attempt %d): %v", attempt+1, err))
	}
	return err
}

// repairBusyAttempts and repairBusyBackoff bound the wait for a busy image:
// about half a minute.
var (
	repairBusyAttempts = 30
	repairBusyBackoff  = time.Second
)

// repairOffline is the repair of the unmounted image file.
func (d *Doctor) repairOffline(ctx context.Context, inc *Incident, s *Step, pol config.FsckPolicy, image string) error {
	// The containers are down until it ends: the repair runs first.
	cctx, cancel := context.WithTimeout(imagefs.Urgent(ctx), pol.Timeout)
	defer cancel()
	flag := "y"
	if pol.Repair == "preen" {
		flag = "p"
	}
	res, err := d.tools.repair(cctx, image, imagefs.RepairMode(pol.Repair))
	inc.Repair = &res
	var verify imagefs.FsckResult
	var verr error
	switch {
	case err == nil && res.ExitCode == 0:
		// A full check that found nothing to fix is the verification:
		// a second one would read the same image again.
		verify = res
		s.Detail = fmt.Sprintf("e2fsck -f%s exit 0 in %v: nothing to fix, verified by that full check", flag, res.Duration.Round(time.Millisecond))
	case err == nil:
		verify, verr = d.tools.verify(cctx, image)
		s.Detail = fmt.Sprintf("e2fsck -f%s exit %d in %v; verify: %s", flag, res.ExitCode, res.Duration.Round(time.Millisecond), verify.Status())
	default:
		s.Detail = fmt.Sprintf("e2fsck -f%s: %v", flag, err)
	}
	if pol.Repair != "preen" && (err != nil || verr == nil && !verify.Clean()) {
		if again, aerr := d.tools.repair(cctx, image, imagefs.RepairFromBackup); aerr == nil {
			inc.Repair, err = &again, nil
			verify, verr = d.tools.verify(cctx, image)
			s.Detail += fmt.Sprintf("; from the backup superblock: exit %d; verify: %s", again.ExitCode, verify.Status())
		} else {
			s.Detail += "; from the backup superblock: " + aerr.Error()
		}
	}
	if err != nil {
		return fmt.Errorf("%w: e2fsck could not run: %w", imagefs.ErrQuarantined, err)
	}
	inc.Verify = &verify
	s.Result = inc.Repair.Status()
	if verr != nil {
		return fmt.Errorf("%w: verify: %w", imagefs.ErrQuarantined, verr)
	}
	if !verify.Clean() {
		return fmt.Errorf("%w: errors remain after the repair (%s)", imagefs.ErrQuarantined, lastLine(verify.Output))
	}
	return nil
}

// quarantineAttempts and quarantinePause bound the tries to unmount a
// quarantined image (two seconds in all): a task deleted a moment ago may
// still hold its root mount.
const (
	quarantineAttempts = 5
	quarantinePause    = 200 * time.Millisecond
)

// quarantine stops the image's containers (a paused task is thawed as it
// is killed: none is left paused; one that cannot be stopped is thawed)
// and takes the image out of service: marked with the reason, so its
// mounts are refused, unmounted and kept.
func (d *Doctor) quarantine(ctx context.Context, inc *Incident, s *Step) error {
	s.Detail = inc.Reason
	var stopped Step
	stopErr := d.stopAll(ctx, inc, &stopped)
	if stopErr == nil {
		// Their roots hold the image until their tasks are deleted.
		stopErr = d.awaitDeletes(ctx, inc)
	}
	if stopErr != nil {
		// A task that would not stop is not left frozen for good either:
		// it runs on, and the reason says so.
		_ = d.thawAll(ctx, inc, &stopped)
	}
	err := retry(ctx, quarantineAttempts, quarantinePause, func() error {
		return d.images.Quarantine(ctx, inc.Snapshot, inc.Reason)
	})
	if stopErr != nil {
		stopErr = fmt.Errorf("stop: %w", stopErr)
	}
	return errors.Join(stopErr, err)
}

// thawAll resumes the containers the freeze paused and that still have
// their task.
func (d *Doctor) thawAll(ctx context.Context, inc *Incident, s *Step) error {
	return d.eachContainer(ctx, inc, s, func(c *ContainerRef) (bool, error) {
		if !c.Paused || c.Stopped {
			return false, nil
		}
		if err := d.ctrs.Resume(ctx, c); err != nil {
			return false, err
		}
		c.Paused = false
		return true, nil
	})
}

// stopAll stops every container on the image that has a task: killed,
// and exited. Their tasks are then deleted in the background
// (deleteTasks), while the repair waits for their roots to let go.
func (d *Doctor) stopAll(ctx context.Context, inc *Incident, s *Step) error {
	defer d.deleteTasks(ctx, inc, true)
	return d.eachContainer(ctx, inc, s, func(c *ContainerRef) (bool, error) {
		if c.Stopped || c.Status == "" || c.Status == "stopped" {
			return false, nil
		}
		// Stop is idempotent (a task gone already is stopped), so a
		// try that failed half way is simply run again.
		if err := retry(ctx, containerdAttempts, retryPause, func() error { return d.ctrs.Stop(ctx, c) }); err != nil {
			return false, err
		}
		c.Stopped = true
		return true, nil
	})
}

// eachContainer applies fn to every container of the incident, saving
// after each one that changed, and sums up in the step's result.
func (d *Doctor) eachContainer(ctx context.Context, inc *Incident, s *Step, fn func(*ContainerRef) (bool, error)) error {
	if d.ctrs == nil {
		s.Result = "no containerd"
		return nil
	}
	var errs []error
	n := 0
	for i := range inc.Containers {
		c := &inc.Containers[i]
		changed, err := fn(c)
		if err != nil {
			errs = append(errs, fmt.Errorf("container %s/%s: %w", c.Namespace, c.ID, err))
			continue
		}
		if changed {
			n++
			d.save(ctx, inc)
		}
	}
	s.Result = fmt.Sprintf("%d", n)
	return errors.Join(errs...)
}
