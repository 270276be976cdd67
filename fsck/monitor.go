package fsck

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/imagefs"
)

// Monitor modes (config fsck.monitor).
const (
	// ModeAuto uses fanotify and falls back to sysfs for a filesystem
	// fanotify cannot watch (a kernel before 5.16).
	ModeAuto = "auto"
	// ModeFanotify uses only fanotify FAN_FS_ERROR.
	ModeFanotify = "fanotify"
	// ModeSysfs polls ext4's sysfs errors_count of each filesystem.
	ModeSysfs = "sysfs"
)

// Report is an error reported on a watched filesystem.
type Report struct {
	// Key is what the filesystem was watched as (a snapshot id).
	Key string
	// At is when the report was received.
	At time.Time
	// Source is "fanotify" or "sysfs".
	Source string
	Event  Event
	// layer says whether an image that is not mounted is a layer.
	layer *bool
}

// Monitor reports the ext4 errors of the filesystems it watches as soon as
// the kernel raises them: through one fanotify group with a filesystem mark
// per image (FAN_FS_ERROR, about 2 ms after the failing syscall), or by
// poll(2) on ext4's sysfs errors_count where fanotify cannot. It is safe
// for concurrent use.
type Monitor struct {
	mode    string
	fan     *os.File // the fanotify group, read through Go's poller; nil in sysfs mode
	fanFD   int      // fan's descriptor for fanotify_mark: fan.Fd() would make it blocking
	reports chan Report
	sysfs   *sysfsPoller

	mu      sync.Mutex // protects watched and byFsid
	watched map[string]*watch
	byFsid  map[Fsid]*watch
}

// watch is one watched filesystem.
type watch struct {
	key, dir string
	fsid     Fsid
	sysfs    string // ext4's sysfs directory of the filesystem
	polled   bool   // by the sysfs poller rather than fanotify
}

// NewMonitor opens a monitor in mode (ModeAuto, ModeFanotify or ModeSysfs).
// Reports are delivered by Run.
func NewMonitor(mode string) (*Monitor, error) {
	m := &Monitor{
		mode:    mode,
		reports: make(chan Report, 64),
		watched: map[string]*watch{},
		byFsid:  map[Fsid]*watch{},
	}
	switch mode {
	case ModeAuto, ModeFanotify, "":
		if m.mode == "" {
			m.mode = ModeAuto
		}
		fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_REPORT_FID|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY)
		if err != nil {
			if mode == ModeFanotify {
				return nil, fmt.Errorf("fanotify_init: %w", err)
			}
			m.mode = ModeSysfs
			break
		}
		m.fan, m.fanFD = os.NewFile(uintptr(fd), "fanotify"), fd
	case ModeSysfs:
	default:
		return nil, fmt.Errorf("monitor mode %q: want %s, %s or %s", mode, ModeAuto, ModeFanotify, ModeSysfs)
	}
	p, err := newSysfsPoller(m.deliver)
	if err != nil {
		m.Close()
		return nil, err
	}
	m.sysfs = p
	return m, nil
}

// Mode is the mode in use: ModeSysfs when fanotify could not be opened.
func (m *Monitor) Mode() string { return m.mode }

// Watch starts watching the ext4 filesystem mounted on dir as key; sysfs is
// its directory under /sys/fs/ext4. It returns the errors the filesystem
// carries already (ext4 keeps its count across mounts), which no event will
// report.
func (m *Monitor) Watch(key, dir, sysfs string) (existing int64, err error) {
	sp, err := imagefs.SpaceOf(dir)
	if err != nil {
		return 0, fmt.Errorf("watch %s: %w", key, err)
	}
	w := &watch{key: key, dir: dir, fsid: Fsid(sp.Fsid), sysfs: sysfs}
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.watched[key]; ok {
		if old.fsid == w.fsid {
			return 0, nil
		}
		m.unwatchLocked(old)
	}
	if other, ok := m.byFsid[w.fsid]; ok {
		return 0, fmt.Errorf("watch %s (%s): fsid %s is watched already as %s", key, dir, w.fsid, other.key)
	}
	if m.fan != nil {
		err := unix.FanotifyMark(m.fanFD, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, unix.FAN_FS_ERROR, unix.AT_FDCWD, dir)
		switch {
		case err == nil:
		case m.mode == ModeAuto && errors.Is(err, unix.EINVAL):
			w.polled = true // no FAN_FS_ERROR in this kernel
		default:
			return 0, fmt.Errorf("watch %s (%s): fanotify_mark: %w", key, dir, err)
		}
	} else {
		w.polled = true
	}
	count, err := m.sysfs.add(w)
	if err != nil && w.polled {
		m.removeMark(w)
		return 0, fmt.Errorf("watch %s (%s): %w", key, dir, err)
	}
	m.watched[key] = w
	m.byFsid[w.fsid] = w
	return count, nil
}

// fileIDInvalid is the handle type of a whole-filesystem report.
const fileIDInvalid = 255

// Unwatch stops watching key. Call it before the filesystem is unmounted.
func (m *Monitor) Unwatch(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w, ok := m.watched[key]; ok {
		m.unwatchLocked(w)
	}
}

func (m *Monitor) unwatchLocked(w *watch) {
	m.removeMark(w)
	m.sysfs.remove(w)
	delete(m.watched, w.key)
	delete(m.byFsid, w.fsid)
}

func (m *Monitor) removeMark(w *watch) {
	if m.fan == nil || w.polled {
		return
	}
	// ENOENT: the mark went with an unmount already.
	_ = unix.FanotifyMark(m.fanFD, unix.FAN_MARK_REMOVE|unix.FAN_MARK_FILESYSTEM, unix.FAN_FS_ERROR, unix.AT_FDCWD, w.dir)
}

// Watched lists the keys watched.
func (m *Monitor) Watched() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]string, 0, len(m.watched))
	for k := range m.watched {
		keys = append(keys, k)
	}
	return keys
}

// deliver queues a report for Run. It never blocks the reader for long: a
// full queue means the handler is behind, and the errors are not lost,
// since they are counted in sysfs and the pipeline reads the count.
func (m *Monitor) deliver(r Report) {
	select {
	case m.reports <- r:
	case <-time.After(time.Second):
	}
}

// Run reads events until ctx ends and calls handle for each report, one at
// a time, in order. It closes the monitor when it returns.
func (m *Monitor) Run(ctx context.Context, handle func(Report)) {
	defer m.Close()
	if m.fan != nil {
		go m.readFanotify(ctx)
	}
	go m.sysfs.run(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-m.reports:
			handle(r)
		}
	}
}

// readFanotify reads the fanotify group until it is closed.
func (m *Monitor) readFanotify(ctx context.Context) {
	buf := make([]byte, 64*1024)
	for {
		n, err := m.fan.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
				return
			}
			log.G(ctx).WithError(err).Error("fanotify read")
			time.Sleep(100 * time.Millisecond)
			continue
		}
		at := time.Now()
		events, err := parseEvents(buf[:n])
		if err != nil {
			log.G(ctx).WithError(err).Error("fanotify event")
		}
		for _, ev := range events {
			m.mu.Lock()
			w, ok := m.byFsid[ev.Fsid]
			m.mu.Unlock()
			if !ok {
				log.G(ctx).WithField("fsid", ev.Fsid).Warn("ext4 error on a filesystem snug no longer watches")
				continue
			}
			m.deliver(Report{Key: w.key, At: at, Source: ModeFanotify, Event: ev})
		}
	}
}

// Close releases the fanotify group and the sysfs poller.
func (m *Monitor) Close() error {
	if m.sysfs != nil {
		m.sysfs.close()
	}
	if m.fan != nil {
		return m.fan.Close()
	}
	return nil
}
