package fsck

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/failpoint"
)

func (d *Doctor) start(ctx context.Context, inc *Incident) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.work(ctx, inc)
	}()
}

// work takes one incident from its recorded state to a final one: plan
// picks the next step for the state and the policy, run runs it, and the
// transitions table gives the state its outcome leads to. The state is
// saved after every step, and each step is recorded before it acts, so a
// daemon killed at any point resumes the incident at the step it was in.
func (d *Doctor) work(ctx context.Context, inc *Incident) {
	lg := log.G(ctx).WithField("incident", inc.ID).WithField("snapshot", inc.Snapshot)
	defer func() {
		d.mu.Lock()
		if d.active[inc.Snapshot] == inc && Final(inc.State) {
			delete(d.active, inc.Snapshot)
			delete(d.more, inc.Snapshot)
		}
		d.mu.Unlock()
	}()
	if len(inc.Steps) == 0 {
		lg.WithField("error", inc.Error).WithField("source", inc.Source).Error("ext4 error in a container image")
		s := Step{Name: StepDetect, Start: inc.DetectedAt, End: inc.DetectedAt, Result: inc.Source}
		inc.Steps = append(inc.Steps, s)
		d.counts.step(s)
		d.save(ctx, inc)
		failpoint.Inject("fsck-" + StepDetect)
		d.publish(ctx, inc, s)
	}
	for !Final(inc.State) {
		// Read at every step: a policy reload applies from the next one.
		pol := d.pol()
		step, end := d.plan(inc, pol)
		if end != "" {
			d.finish(ctx, inc, end)
			break
		}
		if err := d.run(ctx, inc, step, pol); errors.Is(err, errInterrupted) {
			lg.WithField("state", inc.State).Info("incident interrupted; it resumes at the next start")
			return
		}
	}
	entry := lg.WithField("state", inc.State).WithField("reason", inc.Reason)
	if inc.State == StateQuarantined {
		entry.Error("incident: image quarantined")
		return
	}
	entry.Info("incident closed")
}

// plan returns the next step for the incident's state under pol, or the
// final state it ends in without one more step (setting the reason).
func (d *Doctor) plan(inc *Incident, pol config.FsckPolicy) (step string, end State) {
	switch inc.State {
	case StateOpen:
		if d.ctrs == nil {
			inc.State = StateLocated // no containers to find
			return d.plan(inc, pol)
		}
		return StepContainers, ""
	case StateLocated:
		switch {
		case pol.Action == "notify":
			return "", StateReported
		case inc.Layer:
			// A layer is shared by every container above it and never
			// written: freezing them all would stop far more than the
			// damage. It is checked and reported; see docs/design.md.
			return StepCheck, ""
		case d.stoppedForRepair(inc, pol):
			// Nothing can write to it, so nothing needs freezing.
			return StepCheck, ""
		}
		return StepFreeze, ""
	case StateFrozen:
		if pol.Action == "freeze" {
			inc.Reason = "fsck.action is freeze: the containers stay paused for an operator"
			return "", StateHeld
		}
		return StepCheck, ""
	case StateClean, StateDamaged:
		if inc.Layer {
			d.markLayer(inc)
			return "", StateReported
		}
		if inc.State == StateClean {
			return StepThaw, ""
		}
		if pol.Action == "freeze" || pol.Action == "check" {
			inc.Reason = fmt.Sprintf("fsck.action is %s: the image needs a repair; the containers stay paused for an operator", pol.Action)
			return "", StateHeld
		}
		if n := d.recentRepairs(inc, pol); pol.MaxRepairs > 0 && n >= pol.MaxRepairs {
			inc.Reason = fmt.Sprintf("%d repairs of this image in the last %s (fsck.max_repairs %d)", n, pol.RepairWindow, pol.MaxRepairs)
			return StepQuarantine, ""
		}
		return StepStop, ""
	case StateStopped:
		return StepRepair, ""
	case StateRepaired:
		if !pol.Restart {
			inc.Reason = "fsck.restart is false: the containers stay stopped"
			return "", StateResolved
		}
		return StepRestart, ""
	}
	// StateFailing, and a state no table names (readIncident refuses
	// those): only a quarantine is safe.
	return StepQuarantine, ""
}

// markLayer marks a damaged read-only layer for snug status.
func (d *Doctor) markLayer(inc *Incident) {
	inc.Reason = "a read-only layer reported errors: its containers keep running; remove and re-pull the image to replace the layer"
	checked := "not checked"
	if inc.Check != nil {
		checked = inc.Check.Status()
	}
	if err := d.images.MarkDamaged(inc.Snapshot, fmt.Sprintf("%s, %s (incident %s)", inc.Error, checked, inc.ID)); err != nil {
		inc.Reason += "; marking it failed: " + err.Error()
	}
}

// run records step as started, runs it, and records its end, its outcome
// and the state that follows, then publishes it.
func (d *Doctor) run(ctx context.Context, inc *Incident, step string, pol config.FsckPolicy) error {
	if d.isStopping() {
		return errInterrupted
	}
	// A step a crash interrupted is replaced by its new run.
	for i := len(inc.Steps) - 1; i >= 0; i-- {
		if inc.Steps[i].Name == step && inc.Steps[i].End.IsZero() {
			inc.Steps = append(inc.Steps[:i], inc.Steps[i+1:]...)
		}
	}
	inc.Steps = append(inc.Steps, Step{Name: step, Start: time.Now()})
	i := len(inc.Steps) - 1
	d.save(ctx, inc)
	failpoint.Inject("fsck-" + step)
	s := inc.Steps[i]
	out, err := d.do(ctx, inc, step, &s, pol)
	s.End = time.Now()
	if err != nil {
		if s.Result == "" {
			s.Result = string(Failed)
		}
		s.Detail = joinDetail(s.Detail, err.Error())
	}
	if s.Result == "" {
		s.Result = string(out)
	}
	state, terr := next(step, out)
	if terr != nil { // TestEveryOutcomeHasAState keeps this from happening
		state, err = StateFailing, errors.Join(err, terr)
	}
	switch {
	case step == StepRestart && err != nil:
		inc.Reason = "restart: " + err.Error()
	case step == StepQuarantine && err != nil:
		inc.Reason = joinDetail(inc.Reason, "not done: "+err.Error())
	case state == StateFailing && err != nil:
		inc.Reason = fmt.Sprintf("%s: %v", step, err)
	}
	if step == StepRepair && out == OK {
		d.counts.repaired.Add(1)
	}
	inc.Steps[i] = s
	d.counts.step(s)
	if Final(state) {
		d.publish(ctx, inc, s)
		d.finish(ctx, inc, state)
		return nil
	}
	inc.State = state
	d.save(ctx, inc)
	d.publish(ctx, inc, s)
	return nil
}

// do is the work of each step. An error goes with the outcome Failed;
// the check never fails, it only advises.
func (d *Doctor) do(ctx context.Context, inc *Incident, step string, s *Step, pol config.FsckPolicy) (Outcome, error) {
	var err error
	switch step {
	case StepContainers:
		err = d.locate(ctx, inc, s)
	case StepFreeze:
		err = d.eachContainer(ctx, inc, s, func(c *ContainerRef) (bool, error) {
			if c.Status != "running" || c.Paused {
				return false, nil
			}
			if err := d.ctrs.Pause(ctx, c); err != nil {
				return false, err
			}
			c.Paused = true
			return true, nil
		})
	case StepCheck:
		return d.check(ctx, inc, s, pol), nil
	case StepThaw:
		err = d.thawAll(ctx, inc, s)
	case StepStop:
		err = d.stopAll(ctx, inc, s)
	case StepRepair:
		err = d.repair(ctx, inc, s, pol)
	case StepRestart:
		logDir := filepath.Join(d.store.dir, inc.ID)
		err = d.eachContainer(ctx, inc, s, func(c *ContainerRef) (bool, error) {
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
	case StepQuarantine:
		err = d.quarantine(ctx, inc, s)
	default:
		err = fmt.Errorf("unknown step %q", step)
	}
	if err != nil {
		return Failed, err
	}
	return OK, nil
}

// containerdAttempts bounds the tries of a call to containerd that
// failed: containerd restarting, or a shim's ttrpc connection closing as
// its task exits ("ttrpc: closed"), is no reason to quarantine an image.
const containerdAttempts = 3

// retryPause is the pause before the second try; it grows with each.
var retryPause = 500 * time.Millisecond

// retry runs fn until it succeeds, up to containerdAttempts times, and
// returns its last error.
func retry(ctx context.Context, fn func() error) error {
	var err error
	for attempt := range containerdAttempts {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return errors.Join(err, ctx.Err())
			case <-time.After(time.Duration(attempt) * retryPause):
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
	return retry(ctx, func() error {
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
	if d.stoppedForRepair(inc, pol) {
		// Whatever e2fsck -n says, the repair follows: an online check
		// would only delay it. The repair's own e2fsck records the damage.
		s.Detail = "not run: ext4 stopped the filesystem read-only after the error; the offline repair checks it"
		return ReadOnly
	}
	res, err := d.scrub(ctx, m, pol)
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
// an incident that an ext4 report opened, the answer is therefore awaited
// for up to stopWait; any other source (a check, start-up) is asked once.
func (d *Doctor) stoppedForRepair(inc *Incident, pol config.FsckPolicy) bool {
	if inc.Layer || pol.Action != "repair" {
		return false
	}
	m, layer, ok := d.images.MountedImage(inc.Snapshot)
	if !ok || layer {
		return false
	}
	wait := time.Duration(0)
	if inc.Source == ModeFanotify || inc.Source == ModeSysfs {
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
	var err error
	for attempt := range repairBusyAttempts {
		if attempt > 0 {
			time.Sleep(repairBusyBackoff)
		}
		var ran bool
		err = d.images.Offline(ctx, inc.Snapshot, func(image string) error {
			ran = true
			return d.repairOffline(ctx, inc, s, pol, image)
		})
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
	cctx, cancel := context.WithTimeout(ctx, pol.Timeout)
	defer cancel()
	flag := "y"
	if pol.Repair == "preen" {
		flag = "p"
	}
	res, err := d.tools.repair(cctx, image, imagefs.RepairMode(pol.Repair))
	inc.Repair = &res
	var verify imagefs.FsckResult
	var verr error
	if err == nil {
		verify, verr = d.tools.verify(cctx, image)
		s.Detail = fmt.Sprintf("e2fsck -f%s exit %d in %v; verify: %s", flag, res.ExitCode, res.Duration.Round(time.Millisecond), verify.Status())
	} else {
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

// quarantineAttempts bounds the tries to unmount a quarantined image: a
// task deleted a moment ago may still hold its root mount.
const quarantineAttempts = 5

// quarantine stops the image's containers (a paused task is thawed as it
// is killed: none is left paused; one that cannot be stopped is thawed)
// and takes the image out of service: marked with the reason, so its
// mounts are refused, unmounted and kept.
func (d *Doctor) quarantine(ctx context.Context, inc *Incident, s *Step) error {
	s.Detail = inc.Reason
	var stopped Step
	stopErr := d.stopAll(ctx, inc, &stopped)
	if stopErr != nil {
		// A task that would not stop is not left frozen for good either:
		// it runs on, and the reason says so.
		_ = d.thawAll(ctx, inc, &stopped)
	}
	var err error
	for attempt := range quarantineAttempts {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
		}
		if err = d.images.Quarantine(ctx, inc.Snapshot, inc.Reason); err == nil {
			break
		}
	}
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

// stopAll stops every container on the image that has a task.
func (d *Doctor) stopAll(ctx context.Context, inc *Incident, s *Step) error {
	return d.eachContainer(ctx, inc, s, func(c *ContainerRef) (bool, error) {
		if c.Stopped || c.Status == "" || c.Status == "stopped" {
			return false, nil
		}
		// Stop is idempotent (a task gone already is stopped), so a
		// try that failed half way is simply run again.
		if err := retry(ctx, func() error { return d.ctrs.Stop(ctx, c) }); err != nil {
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

// recentRepairs counts the repairs of inc's snapshot within the policy's
// window, this incident excluded.
func (d *Doctor) recentRepairs(inc *Incident, pol config.FsckPolicy) int {
	n := 0
	since := time.Now().Add(-pol.RepairWindow)
	for _, other := range d.store.list() {
		if other.Snapshot == inc.Snapshot && other.ID != inc.ID && other.Repair != nil && other.DetectedAt.After(since) {
			n++
		}
	}
	return n
}

// errInterrupted ends a pipeline when the daemon stops between two steps.
var errInterrupted = errors.New("interrupted by shutdown")

func (d *Doctor) isStopping() bool {
	d.mu.Lock()
	ch := d.stopping
	d.mu.Unlock()
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// finish records the final state and publishes it as a step of its own.
func (d *Doctor) finish(ctx context.Context, inc *Incident, state State) {
	inc.State = state
	if state == StateQuarantined {
		d.counts.quarantined.Add(1)
	}
	now := time.Now()
	s := Step{Name: string(state), Start: now, End: now, Result: string(state), Detail: inc.Reason}
	inc.Steps = append(inc.Steps, s)
	d.counts.step(s)
	d.save(ctx, inc)
	d.publish(ctx, inc, s)
}

func (d *Doctor) publish(ctx context.Context, inc *Incident, s Step) {
	if d.ctrs != nil {
		d.ctrs.Publish(ctx, inc, s)
	}
}

func (d *Doctor) save(ctx context.Context, inc *Incident) {
	d.mu.Lock()
	inc.Errors += d.more[inc.Snapshot]
	delete(d.more, inc.Snapshot)
	d.mu.Unlock()
	inc.Errors = max(inc.Errors, 1)
	if err := d.store.save(inc); err != nil {
		log.G(ctx).WithError(err).Error("cannot record incident")
	}
}

func joinDetail(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}
