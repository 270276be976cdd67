package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snugfs/snug/fsck"
)

// TestIncidentsUnderStress: errors on two images at once, a second error
// on an image while its incident is being worked on, and the daemon killed
// (SIGKILL) in the middle of a repair, its image unmounted and its
// container stopped. Each ends with the image repaired and checked and its
// container running again; nothing is forgotten or done twice.
func TestIncidentsUnderStress(t *testing.T) {
	s := startStack(t, fsckPolicy)
	s.importImage()
	s.waitFollowing()
	names := []string{"st-a", "st-b", "st-c"}
	_, ids, logs := s.startSteady(names...)

	// Two images at once; the first one twice.
	since := time.Now()
	s.triggerError("st-a")
	s.triggerError("st-b")
	time.Sleep(5 * time.Millisecond) // the first incident has begun
	s.triggerError("st-a")
	incA := s.waitIncidentClosed(ids["st-a"], since, 60*time.Second)
	incB := s.waitIncidentClosed(ids["st-b"], since, 60*time.Second)
	s.checkRepaired(incA, "st-a", "", false)
	s.checkRepaired(incB, "st-b", "", false)
	n := 0
	for _, inc := range s.incidents() {
		if inc.Snapshot == ids["st-a"] && !inc.DetectedAt.Before(since) {
			n++
		}
	}
	if n != 1 || incA.Errors < 2 {
		t.Errorf("st-a: %d incidents with %d errors; want its second error added to the one incident", n, incA.Errors)
	}

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
		if c := strings.Count(readFile(logs[n]), "started"); c != 2 {
			t.Errorf("%s's log shows %d starts, want 2", n, c)
		}
	}
	for _, inc := range s.incidents() {
		if !fsck.Final(inc.State) || inc.State != fsck.StateResolved {
			t.Errorf("incident %s ended %s (%s)", inc.ID, inc.State, inc.Reason)
		}
	}
}
