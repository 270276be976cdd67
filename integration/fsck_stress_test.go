package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snugfs/snug/fsck"
)

// TestIncidentsUnderStress: a second error while an image is being
// repaired, errors on two images at once, and the daemon killed
// (SIGKILL) in the middle of a repair, its image unmounted and its
// container stopped. Each ends with the image repaired and checked and its
// container running again; nothing is forgotten or done twice.
func TestIncidentsUnderStress(t *testing.T) {
	s := startStack(t, fsckPolicy)
	s.importImage()
	s.waitFollowing()
	names := []string{"st-a", "st-b", "st-c"}
	_, ids, logs := s.startSteady(names...)

	// A second error while the first image's incident is stopping or
	// repairing it. (A second error on the same image cannot be seen:
	// ext4 ignores errors once it has stopped a filesystem, so the
	// incident's count is what happened before.)
	since := time.Now()
	s.triggerError("st-a")
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		if inc := s.incidentOf(ids["st-a"], since); inc != nil && inc.Done("stop") {
			break
		}
	}
	s.triggerError("st-b")
	incA := s.waitIncidentClosed(ids["st-a"], since, 60*time.Second)
	incB := s.waitIncidentClosed(ids["st-b"], since, 60*time.Second)
	s.checkRepaired(incA, "st-a", "", false)
	s.checkRepaired(incB, "st-b", "", false)
	aEnd := incA.Steps[len(incA.Steps)-1].End
	if !incB.DetectedAt.Before(aEnd) {
		t.Errorf("st-b's error came %v after st-a's incident ended; want it during st-a's repair", incB.DetectedAt.Sub(aEnd))
	}
	for _, id := range []string{ids["st-a"], ids["st-b"]} {
		n := 0
		for _, inc := range s.incidents() {
			if inc.Snapshot == id && !inc.DetectedAt.Before(since) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("snapshot %s: %d incidents, want 1", id, n)
		}
	}

	// Two images at once.
	since = time.Now()
	s.triggerError("st-a")
	s.triggerError("st-b")
	s.checkRepaired(s.waitIncidentClosed(ids["st-a"], since, 60*time.Second), "st-a", "", false)
	s.checkRepaired(s.waitIncidentClosed(ids["st-b"], since, 60*time.Second), "st-b", "", false)

	// Killed with the image unmounted, before e2fsck.
	s.snug.Env = []string{"SNUG_FAILPOINT=offline-unmounted"}
	s.snug.Restart(syscall.SIGTERM)
	since = time.Now()
	s.triggerError("st-c")
	select {
	case <-s.snug.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the daemon did not reach the failpoint:\n%s", lastLines(s.snug.Log(), 20))
	}
	if pid := s.taskPID("st-c"); pid != "" {
		t.Fatalf("st-c still runs (pid %s) with the daemon killed mid-repair", pid)
	}
	s.snug.Env = nil
	s.snug.start()
	s.waitSnapshotter()
	incC := s.waitIncidentClosed(ids["st-c"], since, 60*time.Second)
	s.checkRepaired(incC, "st-c", "", false)
	repairs := 0
	for _, st := range incC.Steps {
		if st.Name == "repair" {
			repairs++
		}
	}
	if repairs != 1 || !strings.Contains(s.snug.Log(), "resuming incident") {
		t.Errorf("st-c: %d repair steps recorded; want the interrupted one replaced by its new run", repairs)
	}
	requireMountedOnce(t, s.activeImage("st-c").Path)
	for _, n := range names {
		if s.taskPID(n) == "" {
			t.Errorf("%s is not running", n)
		}
		want := map[string]int{"st-a": 3, "st-b": 3, "st-c": 2}[n]
		if c := strings.Count(readFile(logs[n]), "started"); c != want {
			t.Errorf("%s's log shows %d starts, want %d", n, c, want)
		}
	}
	for _, inc := range s.incidents() {
		if !fsck.Final(inc.State) || inc.State != fsck.StateResolved {
			t.Errorf("incident %s ended %s (%s)", inc.ID, inc.State, inc.Reason)
		}
	}
}
