// Package urgent gives the work a stopped container waits for (its image's
// repair and its restart) the CPU and the disk before the host's other
// work. On a host whose two CPUs are saturated by fifty containers
// starting, that work otherwise gets a fiftieth of them, and a restart that
// takes 0.3 s on a quiet host takes ten.
//
// Two levers: a process or thread's own priority (nice -10 and the
// best-effort I/O class's highest level), which weighs against the other
// processes of its CPU cgroup; and Cgroup, a CPU cgroup of its own whose
// weight is a hundred times the default, which weighs against every other
// process of the host's root cgroup (where containerd and each shim and
// runc it starts run). A process is moved there for its urgent part only.
package urgent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"
)

// Cgroup is the CPU cgroup of urgent work, relative to the cgroup root as
// runc's ShimCgroup option takes it.
const Cgroup = "/snug-repair"

// Its weight: cgroup v1 cpu.shares (default 1024), cgroup v2 cpu.weight
// (default 100).
const (
	shares = 102400
	weight = 10000
)

// Nice is the nice value of an urgent process or thread.
const Nice = -10

// hierarchy is the host's CPU controller as urgent uses it.
type hierarchy struct {
	unified bool
	root    string // /sys/fs/cgroup/cpu (v1), /sys/fs/cgroup (v2)
}

// Setup makes Cgroup (or finds it) and sets its weight, once. Its error
// says why the host has no CPU cgroup urgent can use (no CPU controller, or
// not root); urgent work then has its own priority only.
func Setup() error {
	_, err := setup()
	return err
}

var setup = sync.OnceValues(func() (*hierarchy, error) {
	if cgroups.IsCgroup2UnifiedMode() {
		return makeHierarchy(true, "/sys/fs/cgroup")
	}
	root, err := cgroups.FindCgroupMountpoint("", "cpu")
	if err != nil {
		return nil, fmt.Errorf("cgroup v1: %w", err)
	}
	return makeHierarchy(false, root)
})

// makeHierarchy makes Cgroup, with its weight, in the CPU controller's
// hierarchy mounted at root (cgroup v2: the unified hierarchy, whose root
// must enable the cpu controller for its children).
func makeHierarchy(unified bool, root string) (*hierarchy, error) {
	h := &hierarchy{unified: unified, root: root}
	file, value := "cpu.shares", strconv.Itoa(shares)
	if unified {
		ctl, err := cgroups.ReadFile(root, "cgroup.subtree_control")
		if err != nil {
			return nil, fmt.Errorf("cgroup v2: %w", err)
		}
		if !slices.Contains(strings.Fields(ctl), "cpu") {
			return nil, fmt.Errorf("cgroup v2: the cpu controller is not enabled in %s", filepath.Join(root, "cgroup.subtree_control"))
		}
		file, value = "cpu.weight", strconv.Itoa(weight)
	}
	dir := h.dir(Cgroup)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	if err := cgroups.WriteFile(dir, file, value); err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	return h, nil
}

// dir is cgroup path's directory in the CPU controller's hierarchy.
func (h *hierarchy) dir(path string) string {
	return filepath.Join(h.root, filepath.Clean("/"+path))
}

// Process gives a started process (one thread: a tool snug runs) the
// priority of urgent work: Cgroup, nice and I/O priority. It needs root;
// without it the process runs at the priority it has, which is only slower.
func Process(pid int) {
	if h, err := setup(); err == nil {
		_ = cgroups.WriteCgroupProc(h.dir(Cgroup), pid)
	}
	prioritise(pid)
}

// Thread locks the calling goroutine to its OS thread and gives the thread
// the priority of urgent work, for what a stopped container waits for (the
// error monitor's repair: its records, unmounts and mounts). The goroutine
// must not unlock the thread: Go ends a thread whose goroutine exits locked
// to it (the main thread it parks for good instead), and starts new threads
// from a thread of its own rather than cloning a locked one, so the
// priority goes with the goroutine and never reaches other work. Processes
// the goroutine starts inherit it. With cgroup v2, where a thread cannot
// leave its process's cgroup, the thread has its own priority only.
func Thread() {
	runtime.LockOSThread()
	tid := unix.Gettid()
	if h, err := setup(); err == nil && !h.unified {
		_ = cgroups.WriteFile(h.dir(Cgroup), "tasks", strconv.Itoa(tid))
	}
	prioritise(tid)
}

// prioritise sets a process's (a thread's) nice value and I/O priority.
func prioritise(pid int) {
	_ = unix.Setpriority(unix.PRIO_PROCESS, pid, Nice)
	const (
		ioprioWhoProcess = 1
		ioprioClassBE    = 2
		ioprioClassShift = 13
	)
	_, _, _ = unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(pid), ioprioClassBE<<ioprioClassShift)
}

// Raise moves process pid, all its threads, into Cgroup, and returns the
// CPU cgroup it was in (for Lower). For a process snug does not own, a
// container's shim: its threads keep their nice values.
func Raise(pid int) (string, error) {
	h, err := setup()
	if err != nil {
		return "", err
	}
	from, err := h.cgroupOf(pid)
	if err != nil {
		return "", err
	}
	return from, Lower(pid, Cgroup)
}

// Lower moves process pid, all its threads, into CPU cgroup path (where
// Raise found it).
func Lower(pid int, path string) error {
	h, err := setup()
	if err != nil {
		return err
	}
	if err := cgroups.WriteCgroupProc(h.dir(path), pid); err != nil {
		return fmt.Errorf("move process %d to cgroup %s: %w", pid, path, err)
	}
	return nil
}

// In reports whether process pid is in Cgroup.
func In(pid int) bool {
	h, err := setup()
	if err != nil {
		return false
	}
	path, err := h.cgroupOf(pid)
	return err == nil && path == Cgroup
}

// cgroupOf is the CPU cgroup of process pid.
func (h *hierarchy) cgroupOf(pid int) (string, error) {
	file := "/proc/" + strconv.Itoa(pid) + "/cgroup"
	paths, err := cgroups.ParseCgroupFile(file)
	if err != nil {
		return "", err
	}
	key := "cpu"
	if h.unified {
		key = ""
	}
	path, ok := paths[key]
	if !ok {
		return "", fmt.Errorf("process %d: no cpu cgroup in %s", pid, file)
	}
	return path, nil
}

// ParentOf is the parent of process pid (a task's init process's parent is
// its shim).
func ParentOf(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseParent(string(b))
}

// parseParent reads the parent pid from a /proc/PID/stat line: "pid (comm)
// state ppid ...", where comm may hold spaces and parentheses.
func parseParent(stat string) (int, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 2 {
		return 0, fmt.Errorf("malformed /proc stat %q", stat)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil || ppid < 0 {
		return 0, fmt.Errorf("malformed /proc stat %q", stat)
	}
	return ppid, nil
}
