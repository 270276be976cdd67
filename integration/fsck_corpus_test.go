package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/internal/roottest"
)

// corpusIO is a victim container's workload in the corruption corpus: it
// makes a payload, a small directory of small files, a large (htree)
// directory and a fragmented file (an extent tree of depth 1), then reads
// all of them, appends a tick and a block (so it allocates) every 20 ms. It
// creates no files as it runs: ext4 would write its cached copy of an
// inode table block over debugfs's change of a neighbouring inode.
const corpusIO = `mkdir -p /data /victim /io /big
[ -f /data/payload ] || dd if=/dev/urandom of=/data/payload bs=1M count=4 2>/dev/null
[ -f /seed ] || head -c 4096 /data/payload > /seed
if ! [ -f /victim/f40 ]; then for i in $(seq 1 40); do echo "file $i" > /victim/f$i; done; fi
if ! [ -f /big/entry-with-a-long-name-to-fill-directory-blocks-400 ]; then
  for i in $(seq 1 400); do : > /big/entry-with-a-long-name-to-fill-directory-blocks-$i; done
fi
if ! [ -f /frag ]; then for i in $(seq 1 12); do dd if=/dev/urandom of=/frag bs=4k count=1 seek=$((i * 2)) conv=notrunc 2>/dev/null; done; fi
sync
echo "started $(date +%s)"
while true; do
  echo t >> /io/ticks
  cat /victim/* /frag > /dev/null 2>&1
  ls /big > /dev/null 2>&1
  head -c 4096 /seed >> /io/blocks
  usleep 20000
done`

// corruption is one kind of damage done to a running container's image.
type corruption struct {
	name string
	// how says what it does, for the docs.
	how string
	// do damages the image at path (mounted on dir): debugfs -w commands
	// on the image file, or an action on the mount.
	do func(t *testing.T, s *stack, path, dir string)
	// quarantined: no repair can make the image clean; the rest end
	// repaired and restarted.
	quarantined bool
	// runtimeOnly: an event on the mounted filesystem, not damage on disk:
	// nothing for start-up to find (TestCorruptionCorpusAtStart).
	runtimeOnly bool
}

func debugfsW(cmds ...string) func(t *testing.T, s *stack, path, dir string) {
	return func(t *testing.T, s *stack, path, dir string) {
		t.Helper()
		for _, c := range cmds {
			if out, err := exec.Command("debugfs", "-w", "-R", c, path).CombinedOutput(); err != nil || strings.Contains(string(out), "debugfs: ") && strings.Contains(string(out), "rror") {
				t.Fatalf("debugfs -w -R %q: %v\n%s", c, err, out)
			}
		}
	}
}

// debugfsRead runs a read-only debugfs command and returns its output.
func debugfsRead(t *testing.T, path, cmd string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", cmd, path).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s", cmd, err, out)
	}
	return string(out)
}

var leafRE = regexp.MustCompile(`(?m)^\s*0/\s*1\s+\d+/\s*\d+\s+\d+\s+-\s+\d+\s+(\d+)`)

// corpus is the damage the corpus test does. Kinds ext4 does not notice
// on a mounted filesystem are in docs/design.md, with the reason.
var corpus = []corruption{
	{name: "extent-header", how: "`sif FILE block[0] 0x12345678`: the magic of a file's extent header",
		do: debugfsW("sif /upper/victim/f1 block[0] 0x12345678")},
	{name: "extent-tree-block", how: "`zap_block -p 0x5a LEAF`: the leaf block of a file's depth-1 extent tree",
		do: func(t *testing.T, s *stack, path, dir string) {
			m := leafRE.FindStringSubmatch(debugfsRead(t, path, "ex /upper/frag"))
			if m == nil {
				t.Fatalf("no extent tree leaf in:\n%s", debugfsRead(t, path, "ex /upper/frag"))
			}
			debugfsW("zap_block -p 0x5a "+m[1])(t, s, path, dir)
		}},
	{name: "directory-block", how: "`zap_block -f DIR -p 0x5a 3`: a leaf block of an htree directory",
		do: debugfsW("zap_block -f /upper/big -p 0x5a 3")},
	{name: "htree-root", how: "`zap_block -f DIR -o 32 -l 16 -p 0x5a 0`: the dx_root header of an htree directory",
		do: debugfsW("zap_block -f /upper/big -o 32 -l 16 -p 0x5a 0")},
	{name: "small-directory", how: "`zap_block -f DIR -o 12 -l 24 -p 0xff 0`: the entries of a one-block directory",
		do: debugfsW("zap_block -f /upper/victim -o 12 -l 24 -p 0xff 0")},
	{name: "inode-links", how: "`sif FILE links_count 0`: a linked inode that says it is deleted",
		do: debugfsW("sif /upper/victim/f2 links_count 0")},
	{name: "inode-mode", how: "`sif FILE mode 0170644`: a file type that does not exist",
		do: debugfsW("sif /upper/victim/f3 mode 0170644")},
	{name: "inode-checksum", how: "`sif FILE checksum 0xbad`: an inode whose checksum does not match",
		do: debugfsW("sif /upper/victim/f4 checksum 0xbad")},
	{name: "remount-abort", how: "`mount -o remount,abort`: ext4 aborts its journal", runtimeOnly: true,
		do: func(t *testing.T, s *stack, path, dir string) {
			if out, err := exec.Command("mount", "-o", "remount,abort", dir).CombinedOutput(); err != nil {
				t.Fatalf("remount,abort: %v\n%s", err, out)
			}
		}},
	{name: "sysfs-error", how: "`echo > /sys/fs/ext4/DEV/trigger_fs_error`: an error raised by ext4 itself", runtimeOnly: true,
		do: func(t *testing.T, s *stack, path, dir string) {
			dev := filepath.Base(s.deviceOf(dir))
			if err := os.WriteFile("/sys/fs/ext4/"+dev+"/trigger_fs_error", []byte("corpus\n"), 0); err != nil {
				t.Fatal(err)
			}
		}},
	{name: "io-error", how: "the image file truncated on the host below a directory's blocks: its reads fail with EIO; the file is shorter than its filesystem, which no e2fsck repairs",
		quarantined: true,
		do: func(t *testing.T, s *stack, path, dir string) {
			out := debugfsRead(t, path, "bmap /upper/big 0")
			blk, err := strconv.ParseInt(strings.TrimSpace(lastLines(out, 1)), 10, 64)
			if err != nil || blk == 0 {
				t.Fatalf("bmap /upper/big 0: %q", out)
			}
			if err := os.Truncate(path, blk*4096); err != nil {
				t.Fatal(err)
			}
		}},
}

// TestCorruptionCorpus damages the image of a running container in each
// of the corpus's ways, while two other containers write, and checks that
// each ends as the corpus says: repaired, verified clean and the container
// running again with its data, or quarantined (task stopped, not paused;
// image unmounted and kept; mounts refused with the reason; snug status,
// a containerd event and a metric show it). The others' I/O never stops.
func TestCorruptionCorpus(t *testing.T) {
	roottest.Require(t, "debugfs")
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := startStack(t, fmt.Sprintf("metrics_address = %q\n", metrics)+fsckPolicy)
	s.importImage()
	s.waitFollowing()
	bystanders := []string{"by-1", "by-2"}
	tickers, stopTicks := s.startBystanders(bystanders...)
	pids := map[string]string{}
	for _, n := range bystanders {
		pids[n] = s.taskPID(n)
	}

	var report []string
	quarantined := 0
	for _, c := range corpus {
		name := "cc-" + c.name
		log := filepath.Join(s.dir, name+".log")
		s.ctr("run", "-d", "--log-uri", "file://"+log, "--snapshotter", "snug", testImageRef, name, "/bin/sh", "-c", corpusIO)
		s.waitTicking(name, log)
		im := s.activeImage(name)
		payload := sha256File(t, filepath.Join(im.Mountpoint, "upper", "data", "payload"))
		// The online check proves the image clean, and its freeze
		// checkpoints the journal: ext4 holds no newer copy of what
		// debugfs changes.
		if out, err := s.snug.Snug(context.Background(), "check", name); err != nil {
			t.Fatalf("%s: snug check before the damage: %v\n%s", c.name, err, out)
		}
		since := time.Now()
		c.do(t, s, im.Path, im.Mountpoint)
		var inc *fsck.Incident
		for end := time.Now().Add(10 * time.Second); inc == nil && time.Now().Before(end); {
			// Evict cached metadata, so the workload's next reads meet
			// the damage.
			if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			inc = s.incidentOf(im.ID, since)
		}
		if inc == nil {
			t.Errorf("%s: no incident 10 s after the damage:\n%s", c.name, lastLines(s.snug.Log(), 10))
			s.ctrErr("tasks", "kill", "-s", "KILL", name)
			continue
		}
		closed := s.waitIncidentClosed(im.ID, since, 60*time.Second)
		took := closed.Steps[len(closed.Steps)-1].End.Sub(closed.DetectedAt)
		report = append(report, fmt.Sprintf("%-18s %-11s %-9s %-9s check %-12s %6dms", c.name, closed.State, closed.Source, closed.Error, checkOutcome(closed), took.Milliseconds()))
		if closed.Source != "fanotify" {
			t.Errorf("%s: noticed by %s, not by fanotify", c.name, closed.Source)
		}
		if c.quarantined {
			quarantined++
			s.checkQuarantined(closed, name)
			continue
		}
		if closed.State != fsck.StateResolved || closed.Verify == nil || !closed.Verify.Clean() {
			t.Errorf("%s: incident ended %s (%s), verify %+v", c.name, closed.State, closed.Reason, closed.Verify)
			continue
		}
		s.waitTicking(name, log)
		if got := sha256File(t, filepath.Join(s.upperOf(name), "data", "payload")); got != payload {
			t.Errorf("%s: the payload changed in the repair", c.name)
		}
		s.ctr("tasks", "kill", "-s", "KILL", name)
	}
	stopTicks()
	t.Logf("corpus: kind, final state, error, check, event to running again (or to quarantined):\n%s", strings.Join(report, "\n"))
	for _, n := range bystanders {
		if s.taskPID(n) != pids[n] {
			t.Errorf("bystander %s was disturbed", n)
		}
		if g := tickers[n].gap(); g > 500*time.Millisecond {
			t.Errorf("bystander %s's I/O stopped for %v", n, g)
		}
	}
	requireMetrics(t, metrics, fmt.Sprintf("snug_incident_quarantined_total %d", quarantined))
}

// checkOutcome is what the incident's check step said.
func checkOutcome(inc fsck.Incident) string {
	for _, st := range inc.Steps {
		if st.Name == fsck.StepCheck {
			return st.Result
		}
	}
	return "-"
}

// waitTicking waits until a container's /io/ticks grows.
func (s *stack) waitTicking(name, log string) {
	t := s.t
	t.Helper()
	var size int64 = -1
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		im := s.activeImage(name)
		if im.Mountpoint == "" {
			continue
		}
		st, err := os.Stat(filepath.Join(im.Mountpoint, "upper", "io", "ticks"))
		if err != nil {
			continue
		}
		if size >= 0 && st.Size() > size {
			return
		}
		size = st.Size()
	}
	t.Fatalf("%s does not tick; its log:\n%s", name, readFile(log))
}

// deviceOf is the loop device mounted on dir.
func (s *stack) deviceOf(dir string) string {
	for _, im := range s.status() {
		if im.Mountpoint == dir {
			return im.Device
		}
	}
	s.t.Fatalf("no image mounted on %s", dir)
	return ""
}

// checkQuarantined checks the one quarantine: the task stopped, not
// paused; the image unmounted and kept; its mounts refused with the
// reason; snug status shows it.
func (s *stack) checkQuarantined(inc fsck.Incident, name string) {
	t := s.t
	t.Helper()
	if inc.State != fsck.StateQuarantined || inc.Reason == "" {
		t.Errorf("%s: incident ended %s (%s), want quarantined with a reason", name, inc.State, inc.Reason)
		return
	}
	out, _ := s.ctrErr("tasks", "ls")
	if strings.Contains(out, name) {
		t.Errorf("%s: quarantined, but its task is still there:\n%s", name, out)
	}
	im := s.activeImage(name)
	if im.Mountpoint != "" || !strings.Contains(im.Problem, "quarantined: ") {
		t.Errorf("%s: quarantined image mounted on %q, problem %q", name, im.Mountpoint, im.Problem)
	}
	if _, err := os.Stat(im.Path); err != nil {
		t.Errorf("%s: the quarantined image was not kept: %v", name, err)
	}
	if out, err := s.ctrErr("tasks", "start", "-d", "--null-io", name); err == nil || !strings.Contains(out, "quarantined") {
		t.Errorf("%s: starting a quarantined container: %v\n%s", name, err, out)
	}
}
