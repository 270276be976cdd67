package fsck

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

// Images is the snapshotter as the pipeline needs it.
type Images interface {
	// MountedImage is the mounted image of snapshot id, and whether it
	// is a read-only layer; ok is false when id has no mounted image.
	MountedImage(id string) (m *imagefs.Mounted, layer bool, ok bool)
	// Offline unmounts the active snapshot id's image and calls fn with
	// the image file. If fn succeeds the image is mounted and served
	// again; if it fails (the repair returns imagefs.ErrQuarantined when
	// e2fsck cannot make the image clean) the snapshot is quarantined:
	// left unmounted, marked with fn's error, its mounts refused.
	Offline(ctx context.Context, id string, fn func(image string) error) error
	// MarkDamaged records that a read-only layer reported errors.
	MarkDamaged(id, reason string) error
	// Quarantine marks the active snapshot id's image quarantined with
	// the reason (its mounts are refused from then on) and unmounts it,
	// keeping the file. Its containers' tasks must be gone for the
	// unmount to succeed; the mark stays even when it fails.
	Quarantine(ctx context.Context, id, reason string) error
}

// Containers is containerd as the pipeline needs it. Every call must be
// idempotent: a restarted daemon repeats the step it was in.
type Containers interface {
	// Using lists the containers whose root is the snapshot (for a
	// layer: every container with the layer below its root).
	Using(ctx context.Context, snapshot string, layer bool) ([]ContainerRef, error)
	// Pause freezes a running container's task (cgroup freezer).
	Pause(ctx context.Context, c *ContainerRef) error
	// Resume thaws it.
	Resume(ctx context.Context, c *ContainerRef) error
	// Stop kills the task and waits for it to exit, recording its stdio
	// for Start. The task stays, stopped, until Delete.
	Stop(ctx context.Context, c *ContainerRef) error
	// Delete deletes the container's stopped task, which unmounts its
	// root; a task gone already is no error. afterStop says the delete
	// follows this daemon's Stop of the task; without it (a delete a
	// restarted daemon takes up) a task found alive is kept, as the
	// restart's.
	Delete(ctx context.Context, c *ContainerRef, afterStop bool) error
	// Start creates and starts the container's task again, with its
	// spec and its stdio; a log in logDir replaces stdio that was a
	// client's FIFOs.
	Start(ctx context.Context, c *ContainerRef, logDir string) error
	// Publish sends a step of an incident as a containerd event.
	Publish(ctx context.Context, inc *Incident, step Step)
}

// Doctor turns the errors the Monitor reports into incidents and works
// each through the pipeline the policy asks for: find the containers on
// the image, freeze them, check the image online, stop them, repair the
// image offline, start them again. Every step is recorded before it acts,
// so a restarted daemon resumes an incident where it stopped.
type Doctor struct {
	images Images
	ctrs   Containers // nil without containerd
	mon    *Monitor
	store  *store
	policy atomic.Pointer[config.FsckPolicy]

	mu     sync.Mutex           // protects active, more, ctx and stopping
	active map[string]*Incident // the open incident of each snapshot
	// more counts errors reported on a snapshot while its incident is
	// open; the incident's own goroutine adds them in when it saves.
	more map[string]uint64
	// deletes holds each open incident's deletion of its stopped tasks
	// (deleteTasks makes the map).
	deletes map[string]*pendingDelete
	// ctx is for the steps, once Run runs: never cancelled, so a step in
	// progress finishes (an e2fsck killed half-way would pass for a failed
	// repair). stopping is closed when Run's ctx ends: no new step starts.
	ctx      context.Context
	stopping <-chan struct{}
	wg       sync.WaitGroup
	// resume holds the incidents to start when Run starts: those a
	// previous daemon left open, and those reported before Run.
	resume []*Incident

	counts counters
	tools  e2fsprogs
}

// e2fsprogs is what the pipeline runs e2fsck through: imagefs, except in
// the tests of the state machine, which make each step end every way it
// can.
type e2fsprogs struct {
	scrub  func(ctx context.Context, m *imagefs.Mounted, method string) (imagefs.ScrubResult, error)
	repair func(ctx context.Context, image string, mode imagefs.RepairMode) (imagefs.FsckResult, error)
	verify func(ctx context.Context, image string) (imagefs.FsckResult, error)
	// stopped reports whether ext4 turned the mounted image read-only.
	stopped func(m *imagefs.Mounted) bool
}

var realE2fsprogs = e2fsprogs{
	scrub: func(ctx context.Context, m *imagefs.Mounted, method string) (imagefs.ScrubResult, error) {
		return m.Scrub(ctx, method)
	},
	repair:  imagefs.Repair,
	verify:  imagefs.Check,
	stopped: (*imagefs.Mounted).Stopped,
}

// NewDoctor opens the incident records in dir and a Monitor in the
// policy's mode. ctrs may be nil: the pipeline then has no containers to
// freeze or restart.
func NewDoctor(dir string, policy config.FsckPolicy, images Images, ctrs Containers) (*Doctor, error) {
	st, err := openStore(dir)
	if st == nil {
		return nil, err
	}
	if err != nil {
		log.L.WithError(err).Warn("some incident records could not be read")
	}
	mon, err := NewMonitor(policy.Monitor)
	if err != nil {
		return nil, err
	}
	d := &Doctor{images: images, ctrs: ctrs, mon: mon, store: st, active: map[string]*Incident{}, more: map[string]uint64{}, tools: realE2fsprogs}
	d.policy.Store(&policy)
	// Incidents a previous daemon left open are the open incidents of
	// their images from now on: errors their images report while snug
	// starts up (ext4 keeps its error count) are added to them, not
	// taken for new incidents. Run resumes them.
	for _, inc := range st.list() {
		if !Final(inc.State) {
			if _, dup := d.active[inc.Snapshot]; !dup {
				inc := inc
				d.active[inc.Snapshot] = &inc
				d.resume = append(d.resume, &inc)
			}
		}
	}
	return d, nil
}

// SetPolicy puts a reloaded policy in force for the next steps. The
// monitor's mode changes only at a restart.
func (d *Doctor) SetPolicy(p config.FsckPolicy) { d.policy.Store(&p) }

func (d *Doctor) pol() config.FsckPolicy { return *d.policy.Load() }

// MonitorMode is how errors are being noticed.
func (d *Doctor) MonitorMode() string { return d.mon.Mode() }

// Mounted is told of every image the snapshotter mounts: it is watched,
// and errors it carries already open an incident.
func (d *Doctor) Mounted(ctx context.Context, id string, layer bool, m *imagefs.Mounted) {
	existing, err := d.mon.Watch(id, m.Dir, m.SysfsDir())
	if err != nil {
		log.G(ctx).WithError(err).WithField("snapshot", id).Error("cannot watch image for errors")
		return
	}
	if existing > 0 {
		d.report(Report{Key: id, At: time.Now(), Source: "existing", Event: Event{Count: uint32(min(existing, 1<<31))}})
	}
}

// MountFailed is told of an image start-up could not mount, or would not:
// its start-up check found it damaged (imagefs.ErrDamaged). An incident
// takes it (its repair runs e2fsck on the unmounted image and mounts it).
func (d *Doctor) MountFailed(ctx context.Context, id string, layer bool, err error) {
	source := "mount"
	if errors.Is(err, imagefs.ErrDamaged) {
		source = "start-check"
	}
	log.G(ctx).WithError(err).WithField("snapshot", id).WithField("source", source).Error("image not mounted")
	d.report(Report{Key: id, At: time.Now(), Source: source, Event: Event{Count: 1}, layer: &layer})
}

// Unmounting is told of every image the snapshotter is about to unmount.
func (d *Doctor) Unmounting(id string) { d.mon.Unwatch(id) }

// Run resumes the incidents a previous daemon left open, then handles
// reports until ctx ends. It waits for the incidents in progress to reach
// a step boundary before returning.
func (d *Doctor) Run(ctx context.Context) {
	d.mu.Lock()
	d.ctx = context.WithoutCancel(ctx)
	d.stopping = ctx.Done()
	resume := d.resume
	d.resume = nil
	d.mu.Unlock()
	for _, inc := range resume {
		if len(inc.Steps) > 0 {
			log.G(ctx).WithField("incident", inc.ID).WithField("state", inc.State).Info("resuming incident")
		}
		d.start(d.ctx, inc)
	}
	d.wg.Add(1)
	go func() { defer d.wg.Done(); d.scrubEvery(ctx) }()
	d.mon.Run(ctx, d.report)
	d.wg.Wait()
}

// report opens an incident for a report, or adds it to the open one.
func (d *Doctor) report(r Report) {
	d.counts.reports.Add(1)
	d.mu.Lock()
	added := d.addToOpenLocked(r)
	d.mu.Unlock()
	if added {
		return
	}
	// Built outside the lock: it reads the image's error record in sysfs.
	inc := &Incident{
		ID:         r.At.UTC().Format("20060102T150405.000000") + "-" + r.Key,
		Snapshot:   r.Key,
		Source:     r.Source,
		Error:      errnoName(r.Event.Error),
		Errors:     uint64(r.Event.Count),
		DetectedAt: r.At,
		State:      StateOpen,
	}
	if r.layer != nil {
		inc.Layer = *r.layer
	}
	if m, layer, ok := d.images.MountedImage(r.Key); ok {
		inc.Image, inc.Layer = m.Image, layer
		rec := m.ErrorRecord()
		inc.Detail = &rec
		if inc.Error == "" && rec.First != nil {
			inc.Error = rec.First.Code
		}
	}
	d.mu.Lock()
	if d.addToOpenLocked(r) { // another report was faster
		d.mu.Unlock()
		return
	}
	d.active[r.Key] = inc
	ctx := d.ctx
	if ctx == nil {
		d.resume = append(d.resume, inc) // Run starts it
	}
	d.mu.Unlock()
	d.counts.incidents.Add(1)
	if ctx != nil {
		d.start(ctx, inc)
	}
}

// addToOpenLocked adds a report to its image's open incident, if it has
// one. d.mu is held.
func (d *Doctor) addToOpenLocked(r Report) bool {
	if _, ok := d.active[r.Key]; !ok {
		return false
	}
	d.more[r.Key] += uint64(max(r.Event.Count, 1))
	return true
}

// Incidents lists every recorded incident, oldest first.
func (d *Doctor) Incidents() []Incident { return d.store.list() }

func readOnly(inc *Incident) bool {
	return inc.Check != nil && inc.Check.Method == imagefs.ScrubReadOnly
}

// errnoName names an errno. 117 is EUCLEAN, the name the kernel docs and
// strerror give; unix.ErrnoName calls it EFSCORRUPTED, ext4's alias.
func errnoName(e int32) string {
	switch e {
	case 0:
		return ""
	case int32(unix.EUCLEAN):
		return "EUCLEAN"
	}
	return unix.ErrnoName(unix.Errno(e))
}

func lastLine(s string) string {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' && i < len(s)-1 {
			return s[i+1:]
		}
	}
	return s
}
