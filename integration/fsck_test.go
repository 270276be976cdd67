package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/cgroups"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/internal/urgent"
)

// steadyIO is a container's workload for the error monitor's tests: it
// makes its data once (a payload whose checksum the test keeps, a
// directory of small files), says it started, then appends a tick to
// /io/ticks every 20 ms and reads every file of /victim, forever. After a restart it
// finds its data and goes on.
const steadyIO = `mkdir -p /data /victim /io
[ -f /data/payload ] || dd if=/dev/urandom of=/data/payload bs=1M count=8 2>/dev/null
if ! [ -f /victim/f40 ]; then for i in $(seq 1 40); do echo "file $i" > /victim/f$i; done; fi
sync
echo "started $(date +%s)"
while true; do echo t >> /io/ticks; cat /victim/* > /dev/null 2>&1; usleep 20000; done`

// fsckPolicy: the default error policy (repair and restart).
const fsckPolicy = containerPolicy + `
[fsck]
action = "repair"
restart = true
`

// ticker follows the ticks a container appends to /io/ticks, from the
// host, and keeps the longest time the file did not grow.
type ticker struct {
	path string

	mu      sync.Mutex
	last    int64
	lastAt  time.Time
	longest time.Duration
}

func (tk *ticker) poll() {
	st, err := os.Stat(tk.path)
	now := time.Now()
	tk.mu.Lock()
	defer tk.mu.Unlock()
	if err != nil || st.Size() == tk.last {
		if !tk.lastAt.IsZero() {
			tk.longest = max(tk.longest, now.Sub(tk.lastAt))
		}
		return
	}
	tk.last, tk.lastAt = st.Size(), now
}

// tickersOf follows the ticks of the named containers, from their uppers.
func tickersOf(uppers map[string]string, names []string) map[string]*ticker {
	tickers := map[string]*ticker{}
	for _, n := range names {
		tickers[n] = &ticker{path: filepath.Join(uppers[n], "io", "ticks")}
	}
	return tickers
}

// startBystanders starts steady writers and follows their ticks until the
// returned function is called (the test's end calls it too).
func (s *stack) startBystanders(names ...string) (map[string]*ticker, func()) {
	uppers, _, _ := s.startSteady(names...)
	tickers := tickersOf(uppers, names)
	stop := followTicks(tickers)
	s.t.Cleanup(stop)
	return tickers, stop
}

// followTicks polls the tickers every 2 ms until the function it returns
// is called (more calls do nothing).
func followTicks(tickers map[string]*ticker) func() {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			for _, tk := range tickers {
				tk.poll()
			}
		}
	}()
	return sync.OnceFunc(func() { close(stop); wg.Wait() })
}

func (tk *ticker) gap() time.Duration {
	tk.mu.Lock()
	defer tk.mu.Unlock()
	return tk.longest
}

// upperOf is where the container's files are on the host: the upper dir in
// its mounted rw image.
func (s *stack) upperOf(container string) string {
	s.t.Helper()
	im := s.activeImage(container)
	if im.Mountpoint == "" {
		s.t.Fatalf("image of %s not mounted: %+v", container, im)
	}
	return filepath.Join(im.Mountpoint, "upper")
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (s *stack) incidents() []fsck.Incident {
	s.t.Helper()
	out, err := s.snug.Snug(context.Background(), "incidents", "--json")
	if err != nil {
		s.t.Fatalf("snug incidents: %v\n%s", err, out)
	}
	var incs []fsck.Incident
	if err := json.Unmarshal([]byte(out), &incs); err != nil {
		s.t.Fatalf("snug incidents --json: %v\n%s", err, out)
	}
	return incs
}

// incidentOf returns the incident of a snapshot id opened after since, if
// any.
func (s *stack) incidentOf(id string, since time.Time) *fsck.Incident {
	for _, inc := range s.incidents() {
		if inc.Snapshot == id && !inc.DetectedAt.Before(since) {
			return &inc
		}
	}
	return nil
}

// waitIncidentClosed waits for the incident of snapshot id to reach a
// final state.
func (s *stack) waitIncidentClosed(id string, since time.Time, limit time.Duration) fsck.Incident {
	s.t.Helper()
	end := time.Now().Add(limit)
	var inc *fsck.Incident
	for time.Now().Before(end) {
		if inc = s.incidentOf(id, since); inc != nil && fsck.Final(inc.State) {
			return *inc
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, _ := s.snug.Snug(context.Background(), "incidents")
	s.t.Fatalf("incident of snapshot %s not closed after %v:\n%s", id, limit, out)
	return fsck.Incident{}
}

// taskPID is the pid of a container's task, 0 when it has none running.
func (s *stack) taskPID(container string) string {
	out, _ := s.ctrErr("tasks", "ls")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == container && f[2] == "RUNNING" {
			return f[1]
		}
	}
	return ""
}

// shimOf is the shim of the task whose process is pid (its parent).
func shimOf(t *testing.T, pid string) string {
	t.Helper()
	n, err := strconv.Atoi(pid)
	if err != nil {
		t.Fatalf("task pid %q: %v", pid, err)
	}
	shim, err := urgent.ParentOf(n)
	if err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(shim)
}

// cpuCgroupOf is process pid's CPU cgroup (cgroup v1's cpu hierarchy, v2's
// single one).
func cpuCgroupOf(t *testing.T, pid string) string {
	t.Helper()
	paths, err := cgroups.ParseCgroupFile("/proc/" + pid + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := paths["cpu"]; ok {
		return p
	}
	return paths[""]
}

// checkShimsRaised checks that a repaired container's task calls ran with
// its shims in urgent.Cgroup: the incident records the stopped task's shim
// moved there from CPU cgroup from; the new task was created with its shim
// there (runc's ShimCgroup option, which the shim keeps in its bundle,
// next to the container's own runc options), and that shim is back in
// from now that the task runs.
func (s *stack) checkShimsRaised(inc *fsck.Incident, container, from string) {
	t := s.t
	t.Helper()
	if err := urgent.Setup(); err != nil {
		t.Logf("no CPU cgroup for repairs on this host (%v): shims not raised", err)
		return
	}
	c := inc.Containers[0]
	if c.ShimPID == 0 || c.ShimCgroup != from {
		t.Errorf("incident records shim %d from CPU cgroup %q, want the stopped task's shim from %q", c.ShimPID, c.ShimCgroup, from)
	}
	opts := readFile(filepath.Join(s.dir, "containerd", "state", "io.containerd.runtime.v2.task", "default", container, "options.json"))
	for _, want := range []string{`"shim_cgroup":"` + urgent.Cgroup + `"`, `"root":"` + s.runcRoot() + `"`} {
		if !strings.Contains(opts, want) {
			t.Errorf("the new task's runc options lack %s: %s", want, opts)
		}
	}
	if got := cpuCgroupOf(t, shimOf(t, s.taskPID(container))); got != from {
		t.Errorf("the new task's shim is in CPU cgroup %q, want %q (where its predecessor was)", got, from)
	}
}

// TestErrorMonitorRepairsOneContainer: three containers on snug do steady
// I/O. The first one's image is corrupted behind ext4's back (an inode's
// extent header, with debugfs, as fstests and LTP's fanotify22 do) and the
// container reads the broken file; later the second one's filesystem
// raises an error through sysfs. Each time the error is noticed at once,
// only that container is frozen, its image checked, repaired offline and
// the container started again with its log; its image is clean and its
// other data intact; the others' I/O never stops.
func TestErrorMonitorRepairsOneContainer(t *testing.T) {
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := startStack(t, fmt.Sprintf("metrics_address = %q\n", metrics)+fsckPolicy)
	s.importImage()
	s.waitFollowing()

	// ctr events, for the incident's steps.
	evctx, stopEvents := context.WithCancel(context.Background())
	events := exec.CommandContext(evctx, filepath.Join(containerdBin(), "ctr"), "-a", s.socket(), "events")
	var evOut strings.Builder
	var evMu sync.Mutex
	events.Stdout = writerFunc(func(p []byte) (int, error) { evMu.Lock(); defer evMu.Unlock(); return evOut.Write(p) })
	if err := events.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopEvents(); events.Wait() })

	names := []string{"io-1", "io-2", "io-3"}
	uppers, ids, logs := s.startSteady(names...)
	payload := map[string]string{}
	for _, n := range names {
		payload[n] = sha256File(t, filepath.Join(uppers[n], "data", "payload"))
	}

	// Follow every container's ticks from the host.
	tickers := tickersOf(uppers, names)
	stopTicks := followTicks(tickers)
	defer stopTicks()
	pids := map[string]string{}
	for _, n := range names {
		pids[n] = s.taskPID(n)
	}

	// 1. Corruption, on io-1. The online check first: it proves the image
	// clean, and its freeze checkpoints the journal, so ext4 holds no
	// newer copy of the inode to write over debugfs's change.
	if out, err := s.snug.Snug(context.Background(), "check", "io-1"); err != nil {
		t.Fatalf("snug check io-1 before the corruption: %v\n%s", err, out)
	} else {
		t.Logf("snug check io-1: %s", strings.TrimSpace(out))
	}
	image := s.activeImage("io-1").Path
	if out, err := exec.Command("debugfs", "-w", "-R", "sif /upper/victim/f1 block[0] 0x12345678", image).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
	since := time.Now()
	var inc *fsck.Incident
	var dropped time.Time
	for i := 0; i < 50 && inc == nil; i++ {
		// Evict the cached inode, so io-1's next read of /victim/f1
		// reads the corrupted one.
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
			t.Fatal(err)
		}
		dropped = time.Now()
		time.Sleep(100 * time.Millisecond)
		inc = s.incidentOf(ids["io-1"], since)
	}
	if inc == nil {
		t.Fatalf("no incident for io-1's image after its corruption:\n%s", lastLines(s.snug.Log(), 30))
	}
	// The workload reads the file every 20 ms: the error happens within
	// that of the cache drop, and the delay counts it.
	detect := inc.DetectedAt.Sub(dropped)
	t.Logf("io-1: %s x%d detected %v after the cache drop (the workload reads every 20 ms)", inc.Error, inc.Errors, detect)
	if detect > 100*time.Millisecond {
		t.Errorf("error detected %v after the cache drop, want <= 100ms", detect)
	}
	closed := s.waitIncidentClosed(ids["io-1"], since, 60*time.Second)
	s.checkRepaired(closed, "io-1", "EUCLEAN", true)

	// 2. An error raised through sysfs, on io-2.
	shimCgroup := cpuCgroupOf(t, shimOf(t, s.taskPID("io-2")))
	since = time.Now()
	raised := s.triggerError("io-2")
	closed2 := s.waitIncidentClosed(ids["io-2"], since, 60*time.Second)
	t.Logf("io-2: %s detected %v after trigger_fs_error", closed2.Error, closed2.DetectedAt.Sub(raised))
	if d := closed2.DetectedAt.Sub(raised); d > 100*time.Millisecond {
		t.Errorf("trigger_fs_error detected after %v, want <= 100ms", d)
	}
	s.checkRepaired(closed2, "io-2", "", false)
	s.checkShimsRaised(&closed2, "io-2", shimCgroup)

	// Every container runs; the ones not hit kept their task; their data
	// and their logs are intact.
	time.Sleep(300 * time.Millisecond)
	stopTicks()
	for _, n := range names {
		if s.taskPID(n) == "" {
			t.Errorf("%s is not running", n)
		}
		if got := sha256File(t, filepath.Join(s.upperOf(n), "data", "payload")); got != payload[n] {
			t.Errorf("%s: payload checksum changed", n)
		}
	}
	if s.taskPID("io-3") != pids["io-3"] {
		t.Errorf("io-3 was restarted: pid %s, was %s", s.taskPID("io-3"), pids["io-3"])
	}
	t.Logf("longest I/O gap: io-3 %v (never hit); io-1 %v, io-2 %v (repaired)", tickers["io-3"].gap(), tickers["io-1"].gap(), tickers["io-2"].gap())
	if g := tickers["io-3"].gap(); g > 500*time.Millisecond {
		t.Errorf("io-3's I/O stopped for %v while the others were repaired", g)
	}
	for _, n := range []string{"io-1", "io-2"} {
		if c := strings.Count(readFile(logs[n]), "started"); c != 2 {
			t.Errorf("%s's log shows %d starts, want 2 (its log kept across the restart):\n%s", n, c, readFile(logs[n]))
		}
	}

	// ctr events showed the steps.
	time.Sleep(200 * time.Millisecond)
	evMu.Lock()
	evs := evOut.String()
	evMu.Unlock()
	// (No freeze: ext4 had stopped both images, so they went straight
	// to the repair.)
	for _, step := range []string{"detect", "containers", "check", "stop", "repair", "restart", "resolved"} {
		if !strings.Contains(evs, fsck.TopicPrefix+step) {
			t.Errorf("ctr events has no %s%s:\n%s", fsck.TopicPrefix, step, evs)
		}
	}
	for _, line := range strings.Split(evs, "\n") {
		if strings.Contains(line, fsck.TopicPrefix+"repair") {
			t.Logf("ctr events: %s", line)
			break
		}
	}
	if !strings.Contains(evs, `"io.snugfs.containers":"default/io-1"`) {
		t.Errorf("ctr events does not name the container:\n%s", evs)
	}
	out, err := s.snug.Snug(context.Background(), "incidents")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snug incidents:\n%s", out)
	for _, want := range []string{"RESOLVED", "repair, e2fsck -f", "default/io-1: was running, stopped, restarted"} {
		if !strings.Contains(out, want) {
			t.Errorf("snug incidents lacks %q", want)
		}
	}
	requireMetrics(t, metrics,
		"snug_incidents_total 2", "snug_incident_repairs_total 2", "snug_incident_restarts_total 2", "snug_incidents_open 0",
		`snug_incident_steps_total{result="read-only",step="check"} 2`, `snug_incident_steps_total{result="repaired",step="repair"} 2`,
		`snug_incident_step_seconds_total{result="repaired",step="repair"} `)
}

// startSteady runs containers doing steadyIO, each logging to a file, and
// waits until each ticks. It returns, by name, where their files are on
// the host, their snapshot ids and their log files.
func (s *stack) startSteady(names ...string) (uppers, ids, logs map[string]string) {
	t := s.t
	t.Helper()
	uppers, ids, logs = map[string]string{}, map[string]string{}, map[string]string{}
	for _, n := range names {
		logs[n] = filepath.Join(s.dir, n+".log")
		s.ctr("run", "-d", "--log-uri", "file://"+logs[n], "--snapshotter", "snug", testImageRef, n, "/bin/sh", "-c", steadyIO)
	}
	for _, n := range names {
		deadline := time.Now().Add(30 * time.Second)
		for {
			uppers[n] = s.upperOf(n)
			ids[n] = s.activeImage(n).ID
			if st, err := os.Stat(filepath.Join(uppers[n], "io", "ticks")); err == nil && st.Size() > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s does not tick; its log:\n%s", n, readFile(logs[n]))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return uppers, ids, logs
}

// triggerError raises an ext4 error on a container's image through sysfs
// and returns when it did (the event may arrive before the write returns).
func (s *stack) triggerError(container string) time.Time {
	s.t.Helper()
	path := "/sys/fs/ext4/" + filepath.Base(s.activeImage(container).Device) + "/trigger_fs_error"
	at := time.Now()
	if err := os.WriteFile(path, []byte("snug test\n"), 0); err != nil {
		s.t.Fatal(err)
	}
	return at
}

// checkRepaired checks an incident that went the whole way for one
// container, and the image's state after it.
func (s *stack) checkRepaired(inc fsck.Incident, container, wantErr string, wantDamage bool) {
	t := s.t
	t.Helper()
	if inc.State != fsck.StateResolved {
		t.Fatalf("%s: incident %s ended %s (%s)", container, inc.ID, inc.State, inc.Reason)
	}
	if wantErr != "" && inc.Error != wantErr {
		t.Errorf("%s: error %q, want %q", container, inc.Error, wantErr)
	}
	if len(inc.Containers) != 1 || inc.Containers[0].ID != container {
		t.Fatalf("%s: incident containers %+v, want only %s", container, inc.Containers, container)
	}
	c := inc.Containers[0]
	if !c.Stopped || !c.Restarted {
		t.Errorf("%s: stopped %v, restarted %v", container, c.Stopped, c.Restarted)
	}
	if stepOf(inc, fsck.StepFreeze) != nil {
		// An image still writable: frozen, then checked online.
		if !c.Paused || inc.Check == nil || (wantDamage && !inc.Check.Uncorrected()) {
			t.Errorf("%s: paused %v; the check before the repair: %+v", container, c.Paused, inc.Check)
		}
	} else if st := stepOf(inc, fsck.StepCheck); c.Paused || st == nil || st.Result != string(fsck.ReadOnly) {
		// ext4 had stopped it: straight to the repair.
		t.Errorf("%s: no freeze, yet paused %v, check step %+v", container, c.Paused, st)
	}
	if inc.Repair == nil || inc.Verify == nil || !inc.Verify.Clean() {
		t.Errorf("%s: repair %+v, verify %+v", container, inc.Repair, inc.Verify)
	} else if wantDamage && inc.Repair.ExitCode&1 == 0 && (inc.Check == nil || !inc.Check.Uncorrected()) {
		t.Errorf("%s: neither the check nor the repair found the damage: repair exit %d", container, inc.Repair.ExitCode)
	}
	var parts []string
	for _, st := range inc.Steps {
		parts = append(parts, fmt.Sprintf("%s %v", st.Name, st.Duration().Round(time.Millisecond)))
	}
	last := inc.Steps[len(inc.Steps)-1]
	t.Logf("%s: running again %v after detection: %s", container, last.End.Sub(inc.DetectedAt).Round(time.Millisecond), strings.Join(parts, ", "))
	// The image is clean now, checked online.
	if out, err := s.snug.Snug(context.Background(), "check", container); err != nil {
		t.Errorf("%s: snug check after the repair: %v\n%s", container, err, out)
	}
	var im api.ImageStatus
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if im = s.activeImage(container); s.taskPID(container) != "" {
			break
		}
	}
	if im.Health != "ok" || s.taskPID(container) == "" {
		t.Errorf("%s after the repair: health %s, task pid %q", container, im.Health, s.taskPID(container))
	}
}

// stepOf is the incident's step named name, or nil.
func stepOf(inc fsck.Incident, name fsck.StepName) *fsck.Step {
	for i := range inc.Steps {
		if inc.Steps[i].Name == name {
			return &inc.Steps[i]
		}
	}
	return nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
