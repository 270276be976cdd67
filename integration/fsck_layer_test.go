package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/imagefs"
)

// TestLayerErrorAndQuarantine: an error on a read-only layer image is
// checked and reported, and the containers above it keep running; an image
// that breaks more often than fsck.max_repairs allows is quarantined: its
// container stays stopped, the snapshot is refused to containerd with the
// reason, and a restarted daemon does not mount it again.
func TestLayerErrorAndQuarantine(t *testing.T) {
	s := startStack(t, fsckPolicy+"max_repairs = 1\n")
	s.importImage()
	s.waitFollowing()
	_, ids, _ := s.startSteady("lq-a", "lq-b")

	// The layer under both containers.
	var layerDev, layerID string
	for _, im := range s.status() {
		if im.Kind == "committed" && im.Device != "" {
			layerDev, layerID = filepath.Base(im.Device), im.ID
		}
	}
	if layerDev == "" {
		t.Fatal("no mounted layer in snug status")
	}
	pidA, pidB := s.taskPID("lq-a"), s.taskPID("lq-b")
	since := time.Now()
	if err := os.WriteFile("/sys/fs/ext4/"+layerDev+"/trigger_fs_error", []byte("snug test\n"), 0); err != nil {
		t.Fatal(err)
	}
	inc := s.waitIncidentClosed(layerID, since, 30*time.Second)
	if inc.State != fsck.StateReported || !inc.Layer || inc.Check == nil || len(inc.Containers) != 2 {
		t.Fatalf("layer incident: state %s, layer %v, check %+v, containers %+v", inc.State, inc.Layer, inc.Check, inc.Containers)
	}
	for _, step := range inc.Steps {
		if step.Name == "freeze" || step.Name == "stop" || step.Name == "repair" {
			t.Errorf("a layer incident ran %s", step.Name)
		}
	}
	if s.taskPID("lq-a") != pidA || s.taskPID("lq-b") != pidB {
		t.Errorf("containers above the layer were disturbed")
	}
	for _, im := range s.status() {
		if im.ID == layerID && !strings.Contains(im.Damaged, inc.ID) {
			t.Errorf("the layer is not marked damaged in snug status: %q", im.Damaged)
		}
	}

	// lq-a breaks twice: the second time it is quarantined.
	since = time.Now()
	s.triggerError("lq-a")
	first := s.waitIncidentClosed(ids["lq-a"], since, 30*time.Second)
	s.checkRepaired(first, "lq-a", "", false)
	since = time.Now()
	s.triggerError("lq-a")
	second := s.waitIncidentClosed(ids["lq-a"], since, 30*time.Second)
	if second.State != fsck.StateQuarantined || !strings.Contains(second.Reason, "max_repairs") {
		t.Fatalf("second incident: %s (%s)", second.State, second.Reason)
	}
	if s.taskPID("lq-a") != "" {
		t.Error("a quarantined container still runs")
	}
	if s.taskPID("lq-b") != pidB {
		t.Error("lq-b was disturbed")
	}
	im := s.activeImage("lq-a")
	if !strings.Contains(im.Problem, "quarantined") {
		t.Errorf("snug status of a quarantined image: problem %q", im.Problem)
	}
	// containerd cannot start it: snug refuses its mounts, with the reason.
	out, err := s.ctrErr("tasks", "start", "-d", "--null-io", "lq-a")
	if err == nil || !strings.Contains(out, "quarantined") {
		t.Errorf("starting a quarantined container: %v\n%s", err, out)
	}
	// A restarted daemon leaves it unmounted, and the incident closed.
	s.snug.Restart(syscall.SIGTERM)
	s.waitSnapshotter()
	if im := s.activeImage("lq-a"); im.Mountpoint != "" || !strings.Contains(im.Problem, "quarantined") {
		t.Errorf("after a restart: mounted on %q, problem %q", im.Mountpoint, im.Problem)
	}
	// Removing the container removes the quarantined snapshot.
	s.ctr("containers", "rm", "lq-a")
	if _, err := os.Stat(filepath.Dir(second.Image)); !os.IsNotExist(err) {
		// containerd's garbage collector removes the snapshot shortly after.
		deadline := time.Now().Add(10 * time.Second)
		for ; time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if _, err := os.Stat(filepath.Dir(second.Image)); os.IsNotExist(err) {
				break
			}
		}
		if _, err := os.Stat(filepath.Dir(second.Image)); !os.IsNotExist(err) {
			t.Errorf("the quarantined snapshot's directory is still there after ctr containers rm: %v", err)
		}
	}
}

// TestUnmountableImageAtStartup: an image snug cannot mount when it starts
// (its primary superblock destroyed while it was unmounted, as a host crash
// can leave it) opens an incident; the repair fixes it from a backup
// superblock and serves it again, so its container starts. The start-up
// check is off, so the mount meets the damage (with the check on, it finds
// it first: TestCorruptionCorpusAtStart).
func TestUnmountableImageAtStartup(t *testing.T) {
	s := startStack(t, fsckPolicy+"check_at_start = false\n")
	s.importImage()
	s.waitFollowing()
	s.ctr("run", "--snapshotter", "snug", testImageRef, "sb-victim", "/bin/sh", "-c", "echo kept > /kept; sync")
	im := s.activeImage("sb-victim")
	// SIGTERM unmounts the image: its container has exited.
	s.snug.Stop(syscall.SIGTERM)
	if attached, err := imagefs.IsAttached(im.Path); err != nil || attached {
		t.Fatalf("%s still attached after snug's SIGTERM with no container on it: %v", im.Path, err)
	}
	// Zero the primary superblock (bytes 1024-2047).
	f, err := os.OpenFile(im.Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 1024), 1024); err != nil {
		t.Fatal(err)
	}
	f.Close()
	since := time.Now().Add(-time.Second)
	s.snug.start()
	s.waitSnapshotter()
	inc := s.waitIncidentClosed(im.ID, since, 60*time.Second)
	if inc.State != fsck.StateResolved || inc.Source != "mount" || inc.Verify == nil || !inc.Verify.Clean() {
		t.Fatalf("incident: %s (%s), source %s, verify %+v", inc.State, inc.Reason, inc.Source, inc.Verify)
	}
	out := s.ctr("run", "--rm", "--snapshotter", "snug", testImageRef, "sb-reader", "echo", "ok")
	if !strings.Contains(out, "ok") {
		t.Fatalf("a new container after the repair: %q", out)
	}
	if got := readFile(filepath.Join(s.activeImage("sb-victim").Mountpoint, "upper", "kept")); got != "kept\n" {
		t.Errorf("the repaired image holds %q", got)
	}
}
