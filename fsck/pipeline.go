package fsck

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/log"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/internal/failpoint"
	"github.com/snugfs/snug/internal/urgent"
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
// step's row of the pipeline table gives the state its outcome leads to. The state is
// saved after every step, and each step is recorded before it acts, so a
// daemon killed at any point resumes the incident at the step it was in.
func (d *Doctor) work(ctx context.Context, inc *Incident) {
	// The containers are down until the incident ends: its work runs
	// before the host's other work (the goroutine's thread ends with it).
	urgent.Thread()
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
		d.saveDurable(ctx, inc)
		failpoint.Inject("fsck-" + StepDetect.String())
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
func (d *Doctor) run(ctx context.Context, inc *Incident, step StepName, pol config.FsckPolicy) error {
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
	d.write(ctx, inc, step == StepRepair) // see save for why the repair's is synced
	failpoint.Inject("fsck-" + step.String())
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
	s := Step{Name: StepName(state), Start: now, End: now, Result: string(state), Detail: inc.Reason}
	inc.Steps = append(inc.Steps, s)
	d.counts.step(s)
	d.saveDurable(ctx, inc)
	d.publish(ctx, inc, s)
}

func (d *Doctor) publish(ctx context.Context, inc *Incident, s Step) {
	if d.ctrs != nil {
		d.ctrs.Publish(ctx, inc, s)
	}
}

// save records the incident. The record is written at every step, before
// the step acts and after, so a restarted daemon resumes the incident at
// the step it was in; a crash of snug loses none of these writes (they are
// in the host's page cache). Syncing each to disk cost 20-110 ms under the
// load of make bench-fsck, up to half a second per incident, while
// containers waited: only the records a crash of the host must find are
// synced (durable): the incident's first record, the one made before its
// image is repaired (an e2fsck the crash cut short is run again), and its
// final state. After a host crash, which ended every container anyway, an
// incident whose later records were lost resumes at an earlier step, and
// every step is idempotent (see Containers and Images).
func (d *Doctor) save(ctx context.Context, inc *Incident) {
	d.write(ctx, inc, false)
}

// saveDurable is save, synced to disk before it returns.
func (d *Doctor) saveDurable(ctx context.Context, inc *Incident) {
	d.write(ctx, inc, true)
}

func (d *Doctor) write(ctx context.Context, inc *Incident, durable bool) {
	d.mu.Lock()
	inc.Errors += d.more[inc.Snapshot]
	delete(d.more, inc.Snapshot)
	d.mu.Unlock()
	inc.Errors = max(inc.Errors, 1)
	if err := d.store.save(inc, durable); err != nil {
		log.G(ctx).WithError(err).Error("cannot record incident")
	}
}

func joinDetail(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}
