package integration

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// incidentSteps are the steps of an incident that goes the whole way, in
// order; the daemon has a failpoint at the start of each (fsck-STEP), after
// the step is recorded and before it acts. An ext4 error stops the image,
// and its incident goes without the freeze; damage `snug check` finds on
// an image still writable goes through it.
var incidentSteps = []string{"detect", "containers", "freeze", "check", "stop", "repair", "restart"}

// TestIncidentCrashMatrix kills snug serve (SIGKILL) at the start of each
// step of an incident, one container per step, and starts it again. Each
// incident must resume where it stopped and end repaired: image checked
// clean, container running again, each step recorded once (the
// interrupted run replaced by its new one), the image mounted once. The
// other containers keep their processes through every kill and restart.
// (The kill inside the repair, with the image unmounted, is in
// TestIncidentsUnderStress.)
func TestIncidentCrashMatrix(t *testing.T) {
	s := startStack(t, fsckPolicy)
	s.importImage()
	s.waitFollowing()
	// And once inside the restart, after the new task was made (its shim
	// in the repair's CPU cgroup) and before it started.
	kills := append(slices.Clone(incidentSteps), "restart-created")
	names := make([]string, len(kills))
	for i, step := range kills {
		names[i] = "kill-" + step
	}
	_, ids, _ := s.startSteady(names...)
	pids := map[string]string{}
	for _, n := range names {
		pids[n] = s.taskPID(n)
	}
	for i, step := range kills {
		n := names[i]
		s.snug.Env = []string{"SNUG_FAILPOINT=fsck-" + step}
		s.snug.Restart(syscall.SIGTERM)
		since := time.Now()
		if step == "freeze" {
			s.damageForCheck(n)
			// The daemon may die at the failpoint before it answers.
			_, _ = s.snug.Snug(context.Background(), "check", n)
		} else {
			s.triggerError(n)
		}
		select {
		case <-s.snug.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: the daemon did not reach fsck-%s:\n%s", n, step, lastLines(s.snug.Log(), 20))
		}
		if ws, _ := s.snug.cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signal() != syscall.SIGKILL {
			t.Fatalf("%s: the daemon ended with %v, not at the failpoint", n, s.snug.cmd.ProcessState)
		}
		s.snug.Env = nil
		s.snug.start()
		s.waitSnapshotter()
		inc := s.waitIncidentClosed(ids[n], since, 60*time.Second)
		s.checkRepaired(inc, n, "", false)
		seen := map[string]int{}
		for _, st := range inc.Steps {
			seen[st.Name.String()]++
		}
		for _, want := range incidentSteps {
			if want == "freeze" && step != "freeze" {
				if seen[want] != 0 {
					t.Errorf("%s: an image ext4 stopped was frozen: %+v", n, inc.Steps)
				}
				continue
			}
			if seen[want] != 1 {
				t.Errorf("%s (killed at %s): step %s recorded %d times: %+v", n, step, want, seen[want], inc.Steps)
			}
		}
		if step == "restart-created" && !strings.Contains(s.snug.Log(), "kept for the restart") {
			// Deleting the created task would make runc wait for its init.
			t.Errorf("killed at %s: the restarted daemon did not keep the task the restart had made", step)
		}
		if got := strings.Count(s.snug.Log(), "resuming incident"); got != i+1 {
			t.Errorf("killed at %s: the log shows %d resumed incidents, want %d", step, got, i+1)
		}
		requireMountedOnce(t, s.activeImage(n).Path)
		pids[n] = s.taskPID(n)
		if c := inc.Containers[0]; c.ShimCgroup != "" {
			// No shim is left in the repair's CPU cgroup by the kill.
			if got := cpuCgroupOf(t, shimOf(t, pids[n])); got != c.ShimCgroup {
				t.Errorf("killed at %s: the new task's shim is in CPU cgroup %q, want %q", step, got, c.ShimCgroup)
			}
		}
		for _, other := range names {
			if other != n && s.taskPID(other) != pids[other] {
				t.Errorf("killed at %s: %s's process changed from %s to %q", step, other, pids[other], s.taskPID(other))
			}
		}
	}
}

// damageForCheck corrupts an inode of the container's image on disk, for
// `snug check` to find while the filesystem runs on unaware: the check
// first, whose freeze checkpoints the journal, so ext4 holds no newer copy
// of the inode to write over debugfs's change.
func (s *stack) damageForCheck(container string) {
	s.t.Helper()
	if out, err := s.snug.Snug(context.Background(), "check", container); err != nil {
		s.t.Fatalf("snug check %s before the damage: %v\n%s", container, err, out)
	}
	if out, err := exec.Command("debugfs", "-w", "-R", "sif /upper/victim/f1 block[0] 0x12345678", s.activeImage(container).Path).CombinedOutput(); err != nil {
		s.t.Fatalf("debugfs: %v\n%s", err, out)
	}
}
