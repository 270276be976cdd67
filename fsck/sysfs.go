package fsck

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/imagefs"
)

// sysfsPoller watches ext4's errors_count of the filesystems fanotify cannot
// watch. One goroutine polls every file, and an eventfd wakes it when the
// set changes. ext4 calls sysfs_notify on errors_count, which wakes poll(2)
// at once, only when the filesystem keeps running after an error
// (errors=continue, as read-only layers are mounted); with errors=remount-ro
// it writes the superblock directly and notifies nobody, so every count is
// also re-read each sysfsRecheck.
type sysfsPoller struct {
	deliver func(Report)
	wake    int // eventfd

	mu      sync.Mutex // protects the fields below and the use of wake
	entries map[*watch]*sysfsEntry
	closed  bool // no more polling
	running bool // run is polling wake; it closes wake when it ends
	wakeOK  bool // wake is open
}

// sysfsRecheck is how often the poller re-reads every count.
const sysfsRecheck = 250 * time.Millisecond

type sysfsEntry struct {
	f    *os.File
	last int64
}

func newSysfsPoller(deliver func(Report)) (*sysfsPoller, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &sysfsPoller{deliver: deliver, wake: fd, wakeOK: true, entries: map[*watch]*sysfsEntry{}}, nil
}

// add reads w's error count, and keeps polling it if fanotify does not
// watch w. It returns the count.
func (p *sysfsPoller) add(w *watch) (int64, error) {
	f, err := os.Open(filepath.Join(w.sysfs, "errors_count"))
	if err != nil {
		return 0, fmt.Errorf("ext4 sysfs: %w", err)
	}
	n, err := readCount(f)
	if err != nil || !w.polled {
		f.Close()
		return n, err
	}
	p.mu.Lock()
	p.entries[w] = &sysfsEntry{f: f, last: n}
	p.mu.Unlock()
	p.poke()
	return n, nil
}

func (p *sysfsPoller) remove(w *watch) {
	p.mu.Lock()
	e, ok := p.entries[w]
	delete(p.entries, w)
	p.mu.Unlock()
	if ok {
		e.f.Close() // a poll(2) in progress holds its own reference
		p.poke()
	}
}

func (p *sysfsPoller) poke() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pokeLocked()
}

func (p *sysfsPoller) pokeLocked() {
	if p.wakeOK {
		one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
		_, _ = unix.Write(p.wake, one)
	}
}

// run polls until ctx ends or the poller is closed.
func (p *sysfsPoller) run(ctx context.Context) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.running = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.running, p.wakeOK = false, false
		unix.Close(p.wake)
	}()
	go func() {
		<-ctx.Done()
		p.poke()
	}()
	for {
		p.mu.Lock()
		if p.closed || ctx.Err() != nil {
			p.mu.Unlock()
			return
		}
		fds := []unix.PollFd{{Fd: int32(p.wake), Events: unix.POLLIN}}
		watches := []*watch{nil}
		for w, e := range p.entries {
			fds = append(fds, unix.PollFd{Fd: int32(e.f.Fd()), Events: unix.POLLPRI | unix.POLLERR})
			watches = append(watches, w)
		}
		p.mu.Unlock()
		timeout := int(sysfsRecheck / time.Millisecond)
		if len(fds) == 1 {
			timeout = -1 // nothing to re-read: sleep until the set changes
		}
		n, err := unix.Poll(fds, timeout)
		if err != nil && err != unix.EINTR {
			log.G(ctx).WithError(err).Error("poll ext4 errors_count")
			time.Sleep(100 * time.Millisecond)
			continue
		}
		at := time.Now()
		if fds[0].Revents != 0 {
			var b [8]byte
			_, _ = unix.Read(p.wake, b[:])
		}
		for i := 1; i < len(fds); i++ {
			if fds[i].Revents != 0 || n == 0 {
				p.check(ctx, watches[i], at)
			}
		}
	}
}

// check re-reads a polled count (which also re-arms the poll) and reports
// the errors added since the last read.
func (p *sysfsPoller) check(ctx context.Context, w *watch, at time.Time) {
	p.mu.Lock()
	e, ok := p.entries[w]
	p.mu.Unlock()
	if !ok {
		return
	}
	n, err := readCount(e.f)
	if err != nil {
		log.G(ctx).WithError(err).WithField("key", w.key).Warn("read ext4 errors_count")
		return
	}
	if n <= e.last {
		return
	}
	added := n - e.last
	e.last = n
	errno := int32(0)
	if code, err := os.ReadFile(filepath.Join(w.sysfs, "last_error_errcode")); err == nil {
		if c, err := strconv.Atoi(strings.TrimSpace(string(code))); err == nil {
			errno = int32(imagefs.Ext4CodeErrno(c))
		}
	}
	p.deliver(Report{Key: w.key, At: at, Source: ModeSysfs, Event: Event{
		Fsid: w.fsid, Error: errno, Count: uint32(min(added, 1<<31)), HandleType: fileIDInvalid,
	}})
}

func (p *sysfsPoller) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	for w, e := range p.entries {
		e.f.Close()
		delete(p.entries, w)
	}
	if p.running {
		p.pokeLocked() // run closes wake as it ends
		return
	}
	if p.wakeOK {
		p.wakeOK = false
		unix.Close(p.wake)
	}
}

// readCount reads a sysfs counter from the start of the file.
func readCount(f *os.File) (int64, error) {
	var b [32]byte
	n, err := f.ReadAt(b[:], 0)
	if n == 0 && err != nil {
		return 0, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	v, perr := strconv.ParseInt(strings.TrimSpace(string(b[:n])), 10, 64)
	if perr != nil || v < 0 {
		return 0, fmt.Errorf("read %s: not a count: %q", f.Name(), b[:n])
	}
	return v, nil
}
