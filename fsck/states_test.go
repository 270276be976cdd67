package fsck

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snugfs/snug/imagefs"
)

// outcomes lists what each step can end with.
var outcomes = map[StepName][]Outcome{
	StepContainers: {OK, Failed},
	StepFreeze:     {OK, Failed},
	StepCheck:      {Clean, Damaged, Inconclusive, ReadOnly, NotMounted},
	StepThaw:       {OK, Failed},
	StepStop:       {OK, Failed},
	StepRepair:     {OK, Failed},
	StepRestart:    {OK, Failed},
	StepQuarantine: {OK, Failed},
}

func TestEveryOutcomeHasAState(t *testing.T) {
	for step, outs := range outcomes {
		for _, out := range outs {
			st, err := next(step, out)
			if err != nil || !slices.Contains(States, st) {
				t.Errorf("step %s, outcome %s: state %q, %v", step, out, st, err)
			}
		}
	}
	for _, row := range pipeline {
		if _, ok := outcomes[row.step]; !ok {
			t.Errorf("step %s has transitions but no outcomes listed here", row.step)
		}
		for out := range row.next {
			if !slices.Contains(outcomes[row.step], out) {
				t.Errorf("step %s leads somewhere on outcome %s, which is not listed here", row.step, out)
			}
		}
		if row.run == nil || Final(row.from) {
			t.Errorf("step %s: no work, or it starts from a final state (%s)", row.step, row.from)
		}
	}
	for _, st := range States {
		if !Final(st) && rowFrom(st).from != st {
			t.Errorf("open state %s has no row of its own", st)
		}
	}
}

// TestEveryOpenStateHasAPlan: whatever the policy, an open state leads to
// a step of the table or to a final state.
func TestEveryOpenStateHasAPlan(t *testing.T) {
	d := &Doctor{ctrs: &fakeContainers{}, images: &fakeImages{}, store: &store{incidents: map[string]*Incident{}}}
	for _, st := range States {
		if Final(st) {
			continue
		}
		for _, action := range []string{"notify", "freeze", "check", "repair"} {
			for _, layer := range []bool{false, true} {
				for _, restart := range []bool{false, true} {
					pol := policy(action)
					pol.Restart = restart
					inc := &Incident{ID: "i", Snapshot: "1", Layer: layer, State: st}
					step, end := d.plan(inc, pol)
					if (step == "") == (end == "") || end != "" && !Final(end) {
						t.Errorf("state %s, action %s, layer %v: step %q, end %q", st, action, layer, step, end)
					}
					if step != "" && rowOf(step).run == nil {
						t.Errorf("state %s, action %s: step %q has no transitions", st, action, step)
					}
				}
			}
		}
	}
}

// TestEveryStepOutcome drives an incident under the default policy with
// one step ending each way it can, and the others succeeding, and checks
// where it ends: resolved with the container running (not paused), or
// quarantined with its task stopped, never paused, and the image marked.
func TestEveryStepOutcome(t *testing.T) {
	type want struct {
		state  State
		reason string // in the incident's reason
	}
	wants := map[StepName]map[Outcome]want{
		StepContainers: {OK: {StateResolved, ""}, Failed: {StateQuarantined, "containers: "}},
		StepFreeze:     {OK: {StateResolved, ""}, Failed: {StateResolved, ""}},
		StepCheck: {Clean: {StateResolved, ""}, Damaged: {StateResolved, ""}, Inconclusive: {StateResolved, ""},
			ReadOnly: {StateResolved, ""}, NotMounted: {StateResolved, ""}},
		StepThaw:       {OK: {StateResolved, ""}, Failed: {StateResolved, ""}},
		StepStop:       {OK: {StateResolved, ""}, Failed: {StateQuarantined, "not done: stop: "}},
		StepRepair:     {OK: {StateResolved, ""}, Failed: {StateQuarantined, "errors remain after the repair"}},
		StepRestart:    {OK: {StateResolved, ""}, Failed: {StateResolved, "restart: "}},
		StepQuarantine: {OK: {StateQuarantined, "errors remain"}, Failed: {StateQuarantined, "not done: "}},
	}
	for step, outs := range outcomes {
		for _, out := range outs {
			t.Run(step.String()+"/"+out.String(), func(t *testing.T) {
				w, ok := wants[step][out]
				if !ok {
					t.Fatalf("no expectation for step %s, outcome %s", step, out)
				}
				ctrs := &fakeContainers{}
				imgs := &fakeImages{mounted: true}
				checkOut := Damaged // the image needs the repair, so every step runs
				repairFails := false
				switch step {
				case StepCheck:
					checkOut = out
				case StepThaw:
					checkOut = Clean
				case StepRepair:
					repairFails = out == Failed
				case StepQuarantine:
					repairFails = true
					imgs.failQuarantine = out == Failed
				}
				if out == Failed && step != StepRepair && step != StepQuarantine {
					ctrs.fail = step
				}
				if checkOut == NotMounted {
					imgs.mounted = false
				}
				d := newFakeDoctor(t, imgs, ctrs, checkOut, repairFails)
				inc := &Incident{ID: "i-" + step.String(), Snapshot: "1", Image: "/fake/rw.img", Source: "fanotify", DetectedAt: time.Now(), State: StateOpen}
				d.work(context.Background(), inc)

				if inc.State != w.state || !strings.Contains(inc.Reason, w.reason) {
					t.Fatalf("state %s (%s), want %s with %q; steps %v", inc.State, inc.Reason, w.state, w.reason, steps(*inc))
				}
				ran := slices.ContainsFunc(inc.Steps, func(s Step) bool { return s.Name == step })
				if !ran {
					t.Fatalf("step %s did not run: %v", step, steps(*inc))
				}
				for _, s := range ctrs.published {
					if !slices.Contains(States, State(s)) {
						t.Errorf("published state %q is not in the table", s)
					}
				}
				c := ctrs.container
				switch inc.State {
				case StateResolved:
					if c.paused || !c.running && !strings.Contains(inc.Reason, "restart") {
						t.Errorf("resolved, but the container is paused %v, running %v", c.paused, c.running)
					}
				case StateQuarantined:
					if c.paused {
						t.Error("quarantined with the container paused")
					}
					if imgs.quarantined == "" {
						t.Error("quarantined, but the image was not marked")
					}
					if c.running && !strings.Contains(inc.Reason, "stop") {
						t.Errorf("quarantined with the container running, and the reason does not say so: %s", inc.Reason)
					}
				}
			})
		}
	}
}

func newFakeDoctor(t *testing.T, imgs *fakeImages, ctrs *fakeContainers, check Outcome, repairFails bool) *Doctor {
	t.Helper()
	// The fakes answer at once: no waiting for ext4 to stop an image.
	wait := stopWait
	stopWait = 0
	t.Cleanup(func() { stopWait = wait })
	d, err := NewDoctor(t.TempDir(), policy("repair"), imgs, ctrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.mon.Close() })
	d.tools = e2fsprogs{
		scrub: func(context.Context, *imagefs.Mounted, string) (imagefs.ScrubResult, error) {
			switch check {
			case Clean:
				return imagefs.ScrubResult{Method: imagefs.ScrubFrozen}, nil
			case ReadOnly:
				return imagefs.ScrubResult{Method: imagefs.ScrubReadOnly}, nil
			case Inconclusive:
				return imagefs.ScrubResult{Method: imagefs.ScrubFrozen, FsckResult: imagefs.FsckResult{ExitCode: 12}}, errors.New("e2fsck: exit 12")
			}
			return imagefs.ScrubResult{Method: imagefs.ScrubFrozen, FsckResult: imagefs.FsckResult{ExitCode: 4}}, nil
		},
		repair: func(context.Context, string, imagefs.RepairMode) (imagefs.FsckResult, error) {
			return imagefs.FsckResult{Mode: "repair", ExitCode: 1}, nil
		},
		verify: func(context.Context, string) (imagefs.FsckResult, error) {
			if repairFails {
				return imagefs.FsckResult{Mode: "check", ExitCode: 4, Output: "still broken"}, nil
			}
			return imagefs.FsckResult{Mode: "check"}, nil
		},
		stopped: func(*imagefs.Mounted) bool { return imgs.stopped },
	}
	return d
}

// TestStoppedImageGoesStraightToRepair: an image ext4 stopped read-only
// after its error is neither frozen nor checked online under the repair
// policy (every outcome of the check would lead to the repair); under
// the check policy the operator asked for the check, and gets it.
func TestStoppedImageGoesStraightToRepair(t *testing.T) {
	for _, tc := range []struct {
		action string
		want   []string
		state  State
	}{
		{"repair", []string{"detect", "containers", "check", "stop", "repair", "restart", "resolved"}, StateResolved},
		{"check", []string{"detect", "containers", "freeze", "check", "held"}, StateHeld},
	} {
		t.Run(tc.action, func(t *testing.T) {
			imgs := &fakeImages{mounted: true, stopped: true}
			ctrs := &fakeContainers{}
			d := newFakeDoctor(t, imgs, ctrs, Damaged, false)
			scrubbed := false
			scrub := d.tools.scrub
			d.tools.scrub = func(ctx context.Context, m *imagefs.Mounted, method string) (imagefs.ScrubResult, error) {
				scrubbed = true
				return scrub(ctx, m, method)
			}
			d.SetPolicy(policy(tc.action))
			inc := &Incident{ID: "ro-" + tc.action, Snapshot: "1", Source: "fanotify", DetectedAt: time.Now(), State: StateOpen}
			d.work(context.Background(), inc)
			if got := steps(*inc); !slices.Equal(got, tc.want) || inc.State != tc.state {
				t.Fatalf("%s: steps %v, want %v", inc.State, got, tc.want)
			}
			if scrubbed != (tc.action == "check") {
				t.Errorf("e2fsck -n ran %v under action %s", scrubbed, tc.action)
			}
			if tc.action == "repair" && (ctrs.container.paused || !ctrs.container.running) {
				t.Errorf("container paused %v, running %v", ctrs.container.paused, ctrs.container.running)
			}
		})
	}
}

// TestStopRetriedBeforeQuarantine: a task delete that fails once (the
// shim's ttrpc connection closing as the task exits) is tried again, and
// the image is repaired and restarted, not quarantined; a stop that keeps
// failing still ends in the quarantine.
func TestStopRetriedBeforeQuarantine(t *testing.T) {
	defer func(p time.Duration) { retryPause = p }(retryPause)
	retryPause = time.Millisecond
	for _, tc := range []struct {
		failTimes int // 0: every time
		want      State
		failures  int
	}{
		{1, StateResolved, 1},
		{containerdAttempts - 1, StateResolved, containerdAttempts - 1},
		{0, StateQuarantined, 2 * containerdAttempts}, // the stop step's tries, then the quarantine's
	} {
		t.Run(fmt.Sprint(tc.failTimes), func(t *testing.T) {
			ctrs := &fakeContainers{fail: StepStop, failTimes: tc.failTimes}
			d := newFakeDoctor(t, &fakeImages{mounted: true}, ctrs, Damaged, false)
			inc := &Incident{ID: "stop-retry", Snapshot: "1", Image: "/fake/rw.img", Source: "fanotify", DetectedAt: time.Now(), State: StateOpen}
			d.work(context.Background(), inc)
			if inc.State != tc.want {
				t.Fatalf("state %s (%s), want %s; steps %v", inc.State, inc.Reason, tc.want, steps(*inc))
			}
			if ctrs.failed != tc.failures {
				t.Errorf("stop failed %d times, want %d", ctrs.failed, tc.failures)
			}
			if tc.want == StateResolved && !ctrs.container.running {
				t.Error("the container was not restarted after the repair")
			}
		})
	}
}

// TestRepairWaitsForABusyImage: an image whose filesystem lives on in
// another mount namespace for a while (a container being created) is
// repaired once it is free, not quarantined.
func TestRepairWaitsForABusyImage(t *testing.T) {
	defer func(b time.Duration) { repairBusyBackoff = b }(repairBusyBackoff)
	repairBusyBackoff = 10 * time.Millisecond
	for _, tc := range []struct {
		busy int
		want State
	}{{2, StateResolved}, {repairBusyAttempts, StateQuarantined}} {
		imgs := &fakeImages{mounted: true, busy: tc.busy}
		d := newFakeDoctor(t, imgs, &fakeContainers{}, Damaged, false)
		inc := &Incident{ID: "busy", Snapshot: "1", Source: "fanotify", DetectedAt: time.Now(), State: StateOpen}
		d.work(context.Background(), inc)
		if inc.State != tc.want {
			t.Errorf("busy %d times: %s (%s), want %s", tc.busy, inc.State, inc.Reason, tc.want)
		}
	}
}

// fakeImages is one active snapshot, "1".
type fakeImages struct {
	busy           int // Offline finds the image busy this many times
	mounted        bool
	stopped        bool // ext4 turned it read-only
	failQuarantine bool
	quarantined    string
}

func (f *fakeImages) MountedImage(id string) (*imagefs.Mounted, bool, bool) {
	if !f.mounted {
		return nil, false, false
	}
	return &imagefs.Mounted{Image: "/fake/rw.img", Dir: "/fake/mnt"}, false, true
}

func (f *fakeImages) Offline(ctx context.Context, id string, fn func(string) error) error {
	if f.busy > 0 {
		f.busy--
		return fmt.Errorf("offline snapshot %s: still attached after its unmount: %w", id, imagefs.ErrBusy)
	}
	f.mounted = false
	if err := fn("/fake/rw.img"); err != nil {
		f.quarantined = err.Error()
		return err
	}
	f.mounted = true
	return nil
}

func (f *fakeImages) MarkDamaged(id, reason string) error { return nil }

func (f *fakeImages) Quarantine(ctx context.Context, id, reason string) error {
	f.quarantined = reason
	if f.failQuarantine {
		return errors.New("unmount: device busy")
	}
	f.mounted = false
	return nil
}

// fakeContainers is one running container on the image; the step named
// fail fails each time it acts on it, or its first failTimes times.
type fakeContainers struct {
	fail      StepName
	failTimes int
	failed    int
	container struct{ running, paused bool }
	published []string
}

func (f *fakeContainers) Using(ctx context.Context, snapshot string, layer bool) ([]ContainerRef, error) {
	if f.fail == StepContainers {
		return nil, errors.New("containerd: connection refused")
	}
	f.container.running = true
	return []ContainerRef{{Namespace: "default", ID: "c1", Status: "running"}}, nil
}

func (f *fakeContainers) act(step StepName) error {
	if f.fail == step && (f.failTimes == 0 || f.failed < f.failTimes) {
		f.failed++
		return fmt.Errorf("%s refused: ttrpc: closed", step)
	}
	return nil
}

func (f *fakeContainers) Pause(ctx context.Context, c *ContainerRef) error {
	if err := f.act(StepFreeze); err != nil {
		return err
	}
	f.container.paused = true
	return nil
}

func (f *fakeContainers) Resume(ctx context.Context, c *ContainerRef) error {
	if err := f.act(StepThaw); err != nil {
		return err
	}
	f.container.paused = false
	return nil
}

func (f *fakeContainers) Stop(ctx context.Context, c *ContainerRef) error {
	if err := f.act(StepStop); err != nil {
		return err
	}
	f.container.running, f.container.paused = false, false // a kill thaws
	return nil
}

func (f *fakeContainers) Delete(ctx context.Context, c *ContainerRef, afterStop bool) error {
	return f.act(StepStop)
}

func (f *fakeContainers) Start(ctx context.Context, c *ContainerRef, logDir string) error {
	if err := f.act(StepRestart); err != nil {
		return err
	}
	f.container.running = true
	return nil
}

func (f *fakeContainers) Publish(ctx context.Context, inc *Incident, step Step) {
	f.published = append(f.published, string(inc.State))
}

// TestRepairVerifiedOnlyWhenItFixedSomething: e2fsck -fy that found
// nothing to fix (exit 0) was a full check of the image already, and is
// its verification; one that fixed something (exit 1) is followed by
// e2fsck -fn, whose verdict decides (TestEveryStepOutcome
// covers a verify that still finds errors).
func TestRepairVerifiedOnlyWhenItFixedSomething(t *testing.T) {
	for _, exit := range []int{0, 1} {
		t.Run(fmt.Sprint(exit), func(t *testing.T) {
			d := newFakeDoctor(t, &fakeImages{mounted: true, stopped: true}, &fakeContainers{}, Damaged, false)
			verified := 0
			d.tools.repair = func(context.Context, string, imagefs.RepairMode) (imagefs.FsckResult, error) {
				return imagefs.FsckResult{Mode: "repair", ExitCode: exit}, nil
			}
			d.tools.verify = func(context.Context, string) (imagefs.FsckResult, error) {
				verified++
				return imagefs.FsckResult{Mode: "check"}, nil
			}
			inc := &Incident{ID: "verify", Snapshot: "1", Source: "fanotify", DetectedAt: time.Now(), State: StateOpen}
			d.work(context.Background(), inc)
			if inc.State != StateResolved || inc.Verify == nil || !inc.Verify.Clean() {
				t.Fatalf("state %s (%s), verify %+v", inc.State, inc.Reason, inc.Verify)
			}
			if want := exit; verified != want {
				t.Errorf("repair exit %d: e2fsck -fn ran %d times, want %d", exit, verified, want)
			}
		})
	}
}
