package integration

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// classCommitPolicy gives class ci asynchronous journal commits and online
// discard; the base commits in order and leaves freed blocks to its trims.
const classCommitPolicy = containerPolicy + "[policies.ci.image]\nasync_commit = true\ndiscard = true\n"

// TestClassAsyncCommit: a class's image.async_commit (and image.discard) is
// a mount option, so it reaches the images mounted for the class: a
// snapshot labelled with it gets it from its first mount (its image not
// taken premounted from the pool, whose images are mounted the base's
// way), while a container whose
// annotation picks the class keeps its image's mount until the next one,
// and the other containers keep the base's ordered commits. Inside the
// class's container an fsync still makes its device flush. When start-up
// mounts the images again (a daemon killed, their mounts gone), each is
// mounted as its recorded class asks, the annotated one included.
func TestClassAsyncCommit(t *testing.T) {
	s := startStack(t, classCommitPolicy)
	s.runClassContainers("ci", "ci")
	s.requireCommit(map[string]string{"ci-plain": "ordered", "ci-label": "async+discard", "ci-annotation": "ordered"})
	out, err := s.snug.Snug(context.Background(), "status")
	if err != nil || !rowHasWords(out, "/ci-label", "ci", "direct+async") || !rowHasWords(out, "/ci-plain", "-", "direct") {
		t.Fatalf("snug status's table does not show the class's commit mode: %v\n%s", err, out)
	}

	s.requireFsyncFlushes("ci-label")

	// The daemon killed, the containers stopped and their images' mounts
	// gone (a host's shutdown scripts): start-up mounts them again.
	images := map[string]string{}
	for _, c := range []string{"ci-plain", "ci-label", "ci-annotation"} {
		images[c] = s.activeImage(c).Path
	}
	s.snug.Stop(syscall.SIGKILL)
	for c, img := range images {
		s.ctr("tasks", "kill", "-s", "KILL", c)
		waitStopped(t, s, c)
		s.ctr("tasks", "delete", c)
		if err := unix.Unmount(filepath.Join(filepath.Dir(img), "mnt"), 0); err != nil {
			t.Fatalf("unmount the image of %s: %v", c, err)
		}
	}
	s.snug.start()
	s.requireCommit(map[string]string{"ci-plain": "ordered", "ci-label": "async+discard", "ci-annotation": "async+discard"})
}

// requireCommit checks that each container's image commits its journal as
// wanted ("ordered" or "async", "+discard" for online discard), in snug
// status (the commit mode) and in the options the image's ext4 lists for
// itself.
func (s *stack) requireCommit(want map[string]string) {
	s.t.Helper()
	for c, w := range want {
		im := s.activeImage(c)
		b, err := os.ReadFile("/proc/fs/ext4/" + filepath.Base(s.loopOf(c)) + "/options")
		if err != nil {
			s.t.Fatal(err)
		}
		opts := strings.Fields(string(b))
		kernel := "ordered"
		if slices.Contains(opts, "journal_async_commit") {
			kernel = "async"
		}
		if slices.Contains(opts, "discard") {
			kernel += "+discard"
		}
		if commit, _, _ := strings.Cut(w, "+"); im.Commit != commit || kernel != w {
			s.t.Errorf("%s: commit %q in snug status, %q in its ext4's options; want %q", c, im.Commit, kernel, w)
		}
	}
	if s.t.Failed() {
		s.t.FailNow()
	}
}
