package fsck

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snugfs/snug/imagefs"
)

// slowDelete is a container whose task's delete takes until release is
// closed, or fails with err.
type slowDelete struct {
	*fakeContainers
	release chan struct{}
	err     error
	deleted atomic.Bool
	// startedAfterDelete is whether Start came after the delete ended.
	startedAfterDelete atomic.Bool
}

func (s *slowDelete) Delete(ctx context.Context, c *ContainerRef, afterStop bool) error {
	select {
	case <-s.release:
	case <-time.After(5 * time.Second):
		return errors.New("the repair never ran while the delete was pending")
	}
	if s.err != nil {
		return s.err
	}
	s.deleted.Store(true)
	return nil
}

func (s *slowDelete) Start(ctx context.Context, c *ContainerRef, logDir string) error {
	s.startedAfterDelete.Store(s.deleted.Load())
	return s.fakeContainers.Start(ctx, c, logDir)
}

// TestRepairRunsWhileTaskIsDeleted: the stopped task's delete runs on
// while the image is repaired (it only has to free the image's root,
// which the repair's unmount waits for), and the restart waits for it.
func TestRepairRunsWhileTaskIsDeleted(t *testing.T) {
	ctrs := &slowDelete{fakeContainers: &fakeContainers{}, release: make(chan struct{})}
	d := newFakeDoctor(t, &fakeImages{mounted: true, stopped: true}, ctrs.fakeContainers, Damaged, false)
	d.ctrs = ctrs
	repair := d.tools.repair
	d.tools.repair = func(ctx context.Context, image string, mode imagefs.RepairMode) (imagefs.FsckResult, error) {
		if ctrs.deleted.Load() {
			t.Error("the repair waited for the task's delete")
		}
		close(ctrs.release)
		return repair(ctx, image, mode)
	}
	inc := &Incident{ID: "overlap", Snapshot: "1", Source: "fanotify", DetectedAt: time.Now(), State: StateOpen}
	d.work(context.Background(), inc)
	if inc.State != StateResolved || inc.Reason != "" {
		t.Fatalf("state %s (%s)", inc.State, inc.Reason)
	}
	if !ctrs.startedAfterDelete.Load() {
		t.Error("the task was started again before the stopped one was deleted")
	}
	for _, st := range inc.Steps {
		if st.Name == StepRestart && !strings.Contains(st.Detail, "for the stopped tasks' delete, started again in") {
			t.Errorf("restart step's detail %q does not split the delete's wait from the start", st.Detail)
		}
	}
}

// TestFailedTaskDeleteQuarantines: a task whose delete fails keeps its
// root, which holds the image: the repair stops waiting for the image as
// soon as the delete failed, and the quarantine says why.
func TestFailedTaskDeleteQuarantines(t *testing.T) {
	defer func(p time.Duration) { retryPause = p }(retryPause)
	retryPause = time.Millisecond
	defer func(b time.Duration) { repairBusyBackoff = b }(repairBusyBackoff)
	repairBusyBackoff = 10 * time.Millisecond
	release := make(chan struct{})
	close(release)
	ctrs := &slowDelete{fakeContainers: &fakeContainers{}, release: release, err: errors.New("shim: ttrpc: closed")}
	imgs := &fakeImages{mounted: true, stopped: true, busy: repairBusyAttempts}
	d := newFakeDoctor(t, imgs, ctrs.fakeContainers, Damaged, false)
	d.ctrs = ctrs
	inc := &Incident{ID: "nodelete", Snapshot: "1", Source: "fanotify", DetectedAt: time.Now(), State: StateOpen}
	d.work(context.Background(), inc)
	if inc.State != StateQuarantined || !strings.Contains(inc.Reason, "delete its task") {
		t.Fatalf("state %s, reason %q: want quarantined for the failed delete", inc.State, inc.Reason)
	}
	if imgs.busy == 0 {
		t.Error("the repair waited out every busy attempt after the delete had failed")
	}
	if imgs.quarantined == "" {
		t.Error("the image was not quarantined")
	}
}
