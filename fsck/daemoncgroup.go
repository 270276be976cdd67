package fsck

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/containerd/log"

	"github.com/snugfs/snug/internal/urgent"
)

// containerd itself joins urgent.Cgroup while an incident's containers are
// stopped, repaired and started again: under a burst of containers being
// created, each of its calls for them (the kill and the wait, the task
// delete, NewTask before it starts the shim, the answer to the create and
// the start) otherwise waits for the CPU with the hundred processes of the
// burst, five to seven times as long as outside it (docs/benchmarks.md).
//
// What containerd starts meanwhile would inherit the cgroup, so an exec
// watch runs for as long: a process of containerd's (its parent is
// containerd) or a containerd shim, found in urgent.Cgroup, goes back to
// the cgroup containerd came from at its exec, unless it is one of the
// incident's containers' own shim programs (shimHelperOf). The raise is
// recorded first (file daemonRaisedFile in the incidents directory: pid and
// cgroup), so a daemon killed meanwhile puts containerd back at its next
// start (ReconcileDaemon). Several incidents share one raise.

// daemonRaisedFile records a raise of containerd in the incidents directory.
const daemonRaisedFile = "containerd-raised"

// daemonRaise is containerd's raise, shared by the incidents in progress.
type daemonRaise struct {
	mu    sync.Mutex
	file  string // the record; "" until ReconcileDaemon named the directory
	count int    // incidents holding the raise
	pid   int
	from  string
	watch *urgent.ExecWatch
	// keep holds, per incident holding the raise, the matchers of its
	// containers' shim programs; read by the watch's thread.
	keep  map[*int][]func(argv []string) bool
	keeps atomic.Pointer[[]func(argv []string) bool]
}

// RaiseDaemon moves containerd into urgent.Cgroup for the incident whose
// containers are refs, until release is called. Without a CPU cgroup, a
// process events connector or a record directory, it does nothing.
func (c *Containerd) RaiseDaemon(ctx context.Context, refs []ContainerRef) (release func()) {
	r := &c.daemon
	if !c.urgentCgroup(ctx) {
		return func() {}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.file == "" {
		return func() {}
	}
	token := new(int)
	var ms []func(argv []string) bool
	for _, ref := range refs {
		ms = append(ms, shimHelperOf(ref.Namespace, ref.ID))
	}
	if r.keep == nil {
		r.keep = map[*int][]func(argv []string) bool{}
	}
	r.keep[token] = ms
	r.publishKeepsLocked()
	if r.count == 0 {
		if err := c.raiseDaemonLocked(); err != nil {
			delete(r.keep, token)
			r.publishKeepsLocked()
			log.G(ctx).WithError(err).Warn("containerd keeps its CPU cgroup during the repair")
			return func() {}
		}
		log.G(ctx).WithFields(log.Fields{"pid": r.pid, "from": r.from}).Debug("containerd in the repair's CPU cgroup")
	}
	r.count++
	return sync.OnceFunc(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.keep, token)
		r.publishKeepsLocked()
		r.count--
		if r.count == 0 {
			if err := r.lowerLocked(); err != nil {
				log.G(ctx).WithError(err).Warn("containerd left in the repair's CPU cgroup")
			}
		}
	})
}

func (r *daemonRaise) publishKeepsLocked() {
	var all []func(argv []string) bool
	for _, ms := range r.keep {
		all = append(all, ms...)
	}
	r.keeps.Store(&all)
}

// raiseDaemonLocked records and makes the raise, and starts the watch.
func (c *Containerd) raiseDaemonLocked() error {
	r := &c.daemon
	pid, err := urgent.PeerPID(c.address)
	if err != nil {
		return fmt.Errorf("containerd's process: %w", err)
	}
	from, err := urgent.CgroupOf(pid)
	if err != nil {
		return err
	}
	if from == urgent.Cgroup {
		return fmt.Errorf("containerd (%d) is in %s already, moved there by someone else", pid, urgent.Cgroup)
	}
	r.pid, r.from = pid, from
	watch, err := urgent.WatchExecsFunc(r.lowerStray)
	if err != nil {
		return err
	}
	if err := writeRaised(r.file, pid, from); err != nil {
		watch.Stop()
		return err
	}
	if err := urgent.Lower(pid, urgent.Cgroup); err != nil {
		watch.Stop()
		return errors.Join(err, os.Remove(r.file))
	}
	r.watch = watch
	return nil
}

// lowerStray puts back a process containerd started while raised, unless
// it is one of the incidents' own shim programs.
func (r *daemonRaise) lowerStray(pid int, argv []string) bool {
	if !urgent.In(pid) {
		return false
	}
	for _, keep := range *r.keeps.Load() {
		if keep(argv) {
			return false
		}
	}
	parent, err := urgent.ParentOf(pid)
	if err != nil || parent != r.pid && (len(argv) == 0 || !strings.HasPrefix(filepath.Base(argv[0]), "containerd-shim")) {
		return false
	}
	return urgent.Lower(pid, r.from) == nil
}

// lowerLocked ends the raise: the watch stops, containerd goes back, the
// record goes.
func (r *daemonRaise) lowerLocked() error {
	if r.watch != nil {
		r.watch.Stop()
		r.watch = nil
	}
	var err error
	if urgent.In(r.pid) {
		err = urgent.Lower(r.pid, r.from)
	}
	if rerr := os.Remove(r.file); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

// ReconcileDaemon names the directory of the raise's record (the
// incidents'), and puts back a containerd that a daemon killed during an
// incident left in urgent.Cgroup. Called before incidents resume.
func (c *Containerd) ReconcileDaemon(ctx context.Context, dir string) {
	r := &c.daemon
	r.mu.Lock()
	defer r.mu.Unlock()
	r.file = filepath.Join(dir, daemonRaisedFile)
	pid, from, err := readRaised(r.file)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err == nil && urgent.In(pid) {
		err = urgent.Lower(pid, from)
		if err == nil {
			log.G(ctx).WithFields(log.Fields{"pid": pid, "cgroup": from}).Info("containerd put back in its CPU cgroup, after an incident a stop cut short")
		}
	}
	if err != nil {
		log.G(ctx).WithError(err).Warn("a raise of containerd a stop cut short")
	}
	if err := os.Remove(r.file); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).Warn("the record of containerd's raise")
	}
}

// writeRaised records a raise: "PID CGROUP\n", written whole.
func writeRaised(file string, pid int, from string) error {
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+" "+from+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// readRaised reads what writeRaised wrote.
func readRaised(file string) (int, string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, "", err
	}
	pid, from, err := parseRaised(string(b))
	if err != nil {
		return 0, "", fmt.Errorf("record %s: %w", file, err)
	}
	return pid, from, nil
}

// parseRaised parses a raise's record, "PID CGROUP\n": a positive pid and
// an absolute cgroup path of one line.
func parseRaised(text string) (int, string, error) {
	pidText, from, ok := strings.Cut(strings.TrimSuffix(text, "\n"), " ")
	pid, err := strconv.Atoi(pidText)
	if !ok || err != nil || pid <= 0 || !strings.HasPrefix(from, "/") || strings.ContainsAny(from, "\n\x00") {
		return 0, "", fmt.Errorf("%.80q is not \"PID CGROUP\"", text)
	}
	return pid, from, nil
}
