package urgent

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"
)

// TestMain removes Cgroup after the tests when they made it.
func TestMain(m *testing.M) {
	var made string
	if os.Geteuid() == 0 {
		if root, err := cgroups.FindCgroupMountpoint("", "cpu"); err == nil && !cgroups.IsCgroup2UnifiedMode() {
			if _, err := os.Stat(filepath.Join(root, Cgroup)); os.IsNotExist(err) {
				made = filepath.Join(root, Cgroup)
			}
		}
	}
	code := m.Run()
	if made != "" {
		_ = os.Remove(made) // empty again: the tests' processes and threads have left it
	}
	os.Exit(code)
}

func TestParseParent(t *testing.T) {
	for _, tc := range []struct {
		stat string
		want int
		ok   bool
	}{
		{"4242 (containerd-shim) S 1 4242 100 0 -1", 1, true},
		{"77 (a) b) (c) R 4242 77 77", 4242, true},
		{"77 (with space) S 12 77", 12, true},
		{"77 (x) S", 0, false},
		{"77 x S 12", 0, false},
		{"77 (x) S -3 1", 0, false},
		{"77 (x) S nope 1", 0, false},
		{"", 0, false},
	} {
		got, err := parseParent(tc.stat)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseParent(%q) = %d, %v; want %d, ok %v", tc.stat, got, err, tc.want, tc.ok)
		}
	}
}

func FuzzParseParent(f *testing.F) {
	f.Add("4242 (containerd-shim) S 1 4242 100 0 -1")
	f.Add("77 (a) b) (c) R 4242 77 77")
	f.Fuzz(func(t *testing.T, stat string) {
		if ppid, err := parseParent(stat); err == nil && ppid < 0 {
			t.Fatalf("parseParent(%q) = %d", stat, ppid)
		}
	})
}

func TestParentOfSelf(t *testing.T) {
	got, err := ParentOf(os.Getpid())
	if err != nil || got != os.Getppid() {
		t.Fatalf("ParentOf(self) = %d, %v; want %d", got, err, os.Getppid())
	}
}

// requireCgroup skips where the host has no CPU cgroup for urgent work
// (not root, or no cpu controller for the root's children) and fails if a
// root test cannot set it up on a host that has one.
func requireCgroup(t *testing.T) *hierarchy {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("moving processes between cgroups needs root")
	}
	h, err := setup()
	if err != nil {
		if os.Getenv("SNUG_REQUIRE_ROOT") != "" {
			t.Fatalf("no CPU cgroup for urgent work: %v", err)
		}
		t.Skipf("no CPU cgroup for urgent work: %v", err)
	}
	return h
}

// TestRaiseAndLower: a process raised is in Cgroup, whose weight is set,
// and lowered goes back where it was.
func TestRaiseAndLower(t *testing.T) {
	h := requireCgroup(t)
	file, want := "cpu.shares", strconv.Itoa(shares)
	if h.unified {
		file, want = "cpu.weight", strconv.Itoa(weight)
	}
	if got, err := cgroups.ReadFile(h.dir(Cgroup), file); err != nil || strings.TrimSpace(got) != want {
		t.Errorf("%s of %s: %q, %v; want %s", file, Cgroup, got, err, want)
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	if In(pid) {
		t.Fatalf("process %d in %s before Raise", pid, Cgroup)
	}
	from, err := Raise(pid)
	if err != nil {
		t.Fatal(err)
	}
	if mine, _ := h.cgroupOf(os.Getpid()); from != mine {
		t.Errorf("Raise found the child in %q, its parent is in %q", from, mine)
	}
	if !In(pid) {
		t.Fatalf("process %d not in %s after Raise", pid, Cgroup)
	}
	if err := Lower(pid, from); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.cgroupOf(pid); got != from {
		t.Errorf("process %d in %q after Lower, want %q", pid, got, from)
	}
	if _, err := Raise(1 << 30); err == nil {
		t.Error("Raise of a process that does not exist succeeded")
	}
}

// TestThreadStaysWithItsGoroutine: Thread raises the priority of the
// calling goroutine's thread only (its nice value and, with cgroup v1, its
// CPU cgroup), and Go never runs other work on that thread: it ends with
// the goroutine (or, when it is the process's main thread, is parked for
// good), and threads the runtime starts meanwhile do not inherit it.
func TestThreadStaysWithItsGoroutine(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("raising a priority needs root")
	}
	h, cgErr := setup()
	niceOf := func(tid int) (int, bool) {
		// getpriority returns 20 - nice for PRIO_PROCESS.
		p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		return 20 - p, err == nil
	}
	threadCgroup := func(tid int) string {
		if cgErr != nil || h.unified {
			return ""
		}
		paths, err := cgroups.ParseCgroupFile("/proc/self/task/" + strconv.Itoa(tid) + "/cgroup")
		if err != nil {
			return ""
		}
		return paths["cpu"]
	}
	before, _ := niceOf(unix.Gettid())
	type thread struct {
		tid, nice int
		cgroup    string
	}
	got := make(chan thread)
	go func() {
		Thread()
		// Blocking calls on the locked thread make the runtime start
		// threads for the other goroutines.
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() { defer wg.Done(); time.Sleep(20 * time.Millisecond) }()
		}
		time.Sleep(50 * time.Millisecond)
		wg.Wait()
		n, _ := niceOf(unix.Gettid())
		got <- thread{unix.Gettid(), n, threadCgroup(unix.Gettid())}
	}()
	urgent := <-got
	if urgent.nice != Nice {
		t.Errorf("urgent thread at nice %d, want %d", urgent.nice, Nice)
	}
	if cgErr == nil && !h.unified && urgent.cgroup != Cgroup {
		t.Errorf("urgent thread in CPU cgroup %q, want %s", urgent.cgroup, Cgroup)
	}
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, alive := niceOf(urgent.tid)
		if !alive || urgent.tid == os.Getpid() {
			break // ended, or the main thread, which Go parks instead
		}
		if time.Now().After(end) {
			t.Fatalf("thread %d at nice %d outlived its goroutine", urgent.tid, urgent.nice)
		}
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		if tid == urgent.tid {
			continue
		}
		if n, ok := niceOf(tid); ok && n != before {
			t.Errorf("thread %d at nice %d, the process at %d", tid, n, before)
		}
		if cg := threadCgroup(tid); cg == Cgroup {
			t.Errorf("thread %d in %s too", tid, Cgroup)
		}
	}
}

// procEventMsg is one netlink message of the process events connector:
// event what for process tgid.
func procEventMsg(what uint32, tgid int32) []byte {
	le := binary.NativeEndian
	data := make([]byte, cnMsgLen+procEventHeaderLen+8)
	le.PutUint32(data[0:], cnIdxProc)
	le.PutUint32(data[4:], cnValProc)
	le.PutUint16(data[16:], procEventHeaderLen+8)
	ev := data[cnMsgLen:]
	le.PutUint32(ev[0:], what)
	le.PutUint32(ev[procEventHeaderLen:], uint32(tgid)+1) // a thread of it
	le.PutUint32(ev[procEventHeaderLen+4:], uint32(tgid))
	msg := make([]byte, nlmsgHeaderLen, nlmsgHeaderLen+len(data))
	le.PutUint32(msg[0:], uint32(nlmsgHeaderLen+len(data)))
	le.PutUint16(msg[4:], unix.NLMSG_DONE)
	return append(msg, data...)
}

func TestParseExecEvents(t *testing.T) {
	fork := uint32(0x00000001)
	for _, tc := range []struct {
		name string
		buf  []byte
		want []int
	}{
		{"one exec", procEventMsg(procEventExec, 4242), []int{4242}},
		{"a fork is not an exec", procEventMsg(fork, 4242), nil},
		{"two messages", append(procEventMsg(procEventExec, 10), procEventMsg(procEventExec, 11)...), []int{10, 11}},
		{"truncated", procEventMsg(procEventExec, 4242)[:30], nil},
		{"no tgid", procEventMsg(procEventExec, 0), nil},
		{"empty", nil, nil},
	} {
		if got := parseExecEvents(tc.buf); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestParseProcEvents: execs and exits, each with its thread, its thread
// group and its time; a fork is neither.
func TestParseProcEvents(t *testing.T) {
	buf := append(procEventMsg(procEventExec, 10), procEventMsg(procEventExit, 11)...)
	binary.NativeEndian.PutUint64(buf[nlmsgHeaderLen+cnMsgLen+8:], 123456789)
	got := ParseProcEvents(buf)
	want := []ProcEvent{{PID: 11, TGID: 10, At: 123456789}, {Exit: true, PID: 12, TGID: 11}}
	if !slices.Equal(got, want) {
		t.Errorf("%+v, want %+v", got, want)
	}
	if got := ParseProcEvents(procEventMsg(0x1, 10)); got != nil {
		t.Errorf("a fork: %+v", got)
	}
}

func FuzzParseExecEvents(f *testing.F) {
	f.Add(procEventMsg(procEventExec, 4242))
	f.Add(append(procEventMsg(procEventExec, 10), procEventMsg(0x1, 11)...))
	f.Fuzz(func(t *testing.T, buf []byte) {
		for _, pid := range parseExecEvents(buf) {
			if pid <= 0 {
				t.Fatalf("pid %d from %x", pid, buf)
			}
		}
	})
}

// TestWatchExecsRaisesWhatItMatches: while a watch runs, a process of
// root's that execs with arguments it matches is moved into Cgroup, with
// what it forks; another, or one of another user's with those arguments,
// is not; after Stop, nothing more is.
func TestWatchExecsRaisesWhatItMatches(t *testing.T) {
	requireCgroup(t)
	marker := fmt.Sprintf("snug-exec-watch-%d", os.Getpid())
	w, err := WatchExecs(func(argv []string) bool { return slices.Contains(argv, marker) })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	run := func(arg string, uid ...uint32) *exec.Cmd {
		cmd := exec.Command("sh", "-c", "sleep 2", arg)
		if len(uid) > 0 {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid[0], Gid: uid[0]}}
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	mine, other, users := run(marker), run("snug-exec-watch-other"), run(marker, 65534)
	deadline := time.Now().Add(time.Second)
	for !In(mine.Process.Pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d with %s not moved into %s within 1 s", mine.Process.Pid, marker, Cgroup)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if In(other.Process.Pid) {
		t.Errorf("process %d without the marker moved into %s", other.Process.Pid, Cgroup)
	}
	if In(users.Process.Pid) {
		t.Errorf("process %d of user nobody, with the marker, moved into %s", users.Process.Pid, Cgroup)
	}
	raised := w.Stop()
	if !slices.Contains(raised, mine.Process.Pid) {
		t.Errorf("Stop returned %v, want it to hold %d", raised, mine.Process.Pid)
	}
	after := run(marker)
	time.Sleep(200 * time.Millisecond)
	if In(after.Process.Pid) {
		t.Errorf("process %d moved into %s after Stop", after.Process.Pid, Cgroup)
	}
}

// TestMakeHierarchy makes the cgroup in stand-in hierarchies (directories,
// not cgroupfs: this host's CPU controller is cgroup v1): under cgroup v2
// only where the root enables the cpu controller for its children, with
// cpu.weight; under v1 with cpu.shares. A second call finds it made.
func TestMakeHierarchy(t *testing.T) {
	cgroups.TestMode = true // files outside cgroupfs
	t.Cleanup(func() { cgroups.TestMode = false })
	for _, tc := range []struct {
		name      string
		unified   bool
		subtree   string // v2: the root's cgroup.subtree_control
		wantErr   string
		file, val string
	}{
		{name: "v2 without cpu", unified: true, subtree: "io memory pids\n", wantErr: "the cpu controller is not enabled"},
		{name: "v2 without subtree_control", unified: true, wantErr: "cgroup v2"},
		{name: "v2", unified: true, subtree: "cpuset cpu io memory pids\n", file: "cpu.weight", val: "10000"},
		{name: "v1", file: "cpu.shares", val: "102400"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if tc.subtree != "" {
				if err := os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte(tc.subtree), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for range 2 {
				h, err := makeHierarchy(tc.unified, root)
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("err %v, want one saying %q", err, tc.wantErr)
					}
					if _, serr := os.Stat(filepath.Join(root, Cgroup)); !os.IsNotExist(serr) {
						t.Fatalf("the cgroup was made anyway: %v", serr)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if h.unified != tc.unified || h.dir(Cgroup) != filepath.Join(root, "snug-repair") {
					t.Fatalf("hierarchy %+v, dir %s", h, h.dir(Cgroup))
				}
				if b, err := os.ReadFile(filepath.Join(root, "snug-repair", tc.file)); err != nil || strings.TrimSpace(string(b)) != tc.val {
					t.Fatalf("%s: %q, %v; want %s", tc.file, b, err, tc.val)
				}
			}
		})
	}
}
