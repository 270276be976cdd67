package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// startCorpus is damage only a check of the unmounted image finds: ext4
// reads none of it on a running container's path (docs/design.md, "The
// corruption corpus"), or it stops the mount itself.
var startCorpus = []corruption{
	{name: "block-bitmap", how: "`freeb BLOCK`: a block of a file marked free in its group's bitmap",
		do: func(t *testing.T, s *stack, path, dir string) {
			blk := strings.TrimSpace(lastLines(debugfsRead(t, path, "bmap /upper/data/payload 0"), 1))
			debugfsW("freeb "+blk)(t, s, path, dir)
		}},
	{name: "inode-bitmap", how: "`freei FILE`: a file's inode marked free in the inode bitmap",
		do: debugfsW("freei /upper/victim/f5")},
	{name: "group-descriptor", how: "`zap_block -o 0 -l 8 -p 0xff 1`: where group 0's descriptor says its bitmaps are",
		do: debugfsW("zap_block -o 0 -l 8 -p 0xff 1")},
	{name: "journal-superblock", how: "`zap_block -f <8> -p 0 0`: the journal's superblock zeroed",
		do: debugfsW("zap_block -f <8> -p 0 0")},
	{name: "primary-superblock", how: "bytes 1024-2047 of the image zeroed: the primary superblock",
		do: func(t *testing.T, s *stack, path, dir string) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(make([]byte, 1024), 1024); err != nil {
				t.Fatal(err)
			}
		}},
}

// TestCorruptionCorpusAtStart damages, in each of the corpus's on-disk ways
// and in the ways only a check of an unmounted image finds, the image of a
// stopped container while snug is down and the image unmounted (as after a
// host reboot). Starting snug checks every image it must mount: each
// damaged one opens an incident (source start-check) before it is served,
// and ends repaired and verified clean, its container starting again with
// its data, or quarantined as the corpus says. Two other containers write
// all along; snug's restart does not stop their I/O.
func TestCorruptionCorpusAtStart(t *testing.T) {
	roottest.Require(t, "debugfs")
	s := startStack(t, fsckPolicy)
	s.importImage()
	s.waitFollowing()
	bystanders := []string{"sby-1", "sby-2"}
	tickers, stopTicks := s.startBystanders(bystanders...)

	var kinds []corruption
	for _, c := range corpus {
		if !c.runtimeOnly {
			kinds = append(kinds, c)
		}
	}
	kinds = append(kinds, startCorpus...)
	type victim struct {
		c       corruption
		name    string
		image   string
		id      string
		payload string
	}
	var victims []victim
	for _, c := range kinds {
		name := "cs-" + c.name
		s.ctr("run", "-d", "--null-io", "--snapshotter", "snug", testImageRef, name, "/bin/sh", "-c", corpusIO)
		victims = append(victims, victim{c: c, name: name})
	}
	for i := range victims {
		v := &victims[i]
		s.waitTicking(v.name, "/dev/null")
		im := s.activeImage(v.name)
		v.image, v.id = im.Path, im.ID
		v.payload = sha256File(t, filepath.Join(im.Mountpoint, "upper", "data", "payload"))
	}
	for _, v := range victims {
		s.ctr("tasks", "delete", "-f", v.name)
	}
	// SIGTERM unmounts the images no container uses: the victims'.
	s.snug.Stop(syscall.SIGTERM)
	for _, v := range victims {
		if attached, err := imagefs.IsAttached(v.image); err != nil || attached {
			t.Fatalf("%s still attached after snug's SIGTERM with no task on it: %v", v.image, err)
		}
		v.c.do(t, s, v.image, "")
	}
	since := time.Now().Add(-time.Second)
	started := time.Now()
	s.snug.start()
	s.waitSnapshotter()
	served := time.Since(started)

	var report []string
	quarantined := 0
	for _, v := range victims {
		inc := s.waitIncidentClosed(v.id, since, 120*time.Second)
		took := inc.Steps[len(inc.Steps)-1].End.Sub(inc.DetectedAt)
		report = append(report, fmt.Sprintf("%-18s %-11s %-11s repair %-8s %6dms", v.c.name, inc.State, inc.Source, repairStatus(inc), took.Milliseconds()))
		if inc.Source != "start-check" {
			t.Errorf("%s: noticed by %s, not by the start-up check", v.c.name, inc.Source)
		}
		if v.c.quarantined {
			quarantined++
			s.checkQuarantined(inc, v.name)
			continue
		}
		if inc.State != fsck.StateResolved || inc.Verify == nil || !inc.Verify.Clean() {
			t.Errorf("%s: incident ended %s (%s), verify %+v", v.c.name, inc.State, inc.Reason, inc.Verify)
			continue
		}
		s.ctr("tasks", "start", "-d", "--null-io", v.name)
		s.waitTicking(v.name, "/dev/null")
		if got := sha256File(t, filepath.Join(s.upperOf(v.name), "data", "payload")); got != v.payload {
			t.Errorf("%s: the payload changed in the repair", v.c.name)
		}
		s.ctr("tasks", "delete", "-f", v.name)
	}
	stopTicks()
	t.Logf("start-up corpus: snug served %d damaged images %v after its start; kind, final state, source, repair, detection to repaired (or quarantined):\n%s",
		len(victims), served.Round(time.Millisecond), strings.Join(report, "\n"))
	if quarantined == 0 {
		t.Error("no kind of the start-up corpus was quarantined; io-error should be")
	}
	for _, n := range bystanders {
		if g := tickers[n].gap(); g > 500*time.Millisecond {
			t.Errorf("bystander %s's I/O stopped for %v while snug restarted", n, g)
		}
	}
}

// repairStatus is how the incident's repair step ended ("-": none ran).
func repairStatus(inc fsck.Incident) string {
	for _, st := range inc.Steps {
		if st.Name == fsck.StepRepair {
			return st.Result
		}
	}
	return "-"
}
