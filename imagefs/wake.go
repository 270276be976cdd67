package imagefs

import (
	"context"
	"errors"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/fanotify"
)

// waker wakes the Watcher the moment an idle image is written to: one
// fanotify group with a FAN_MODIFY filesystem mark per image, armed while
// the image is cold and removed while it is hot (its checks run every
// lane then, and a busy writer would otherwise raise an event per write).
// Without it, the first check of a writer waking up comes up to a whole
// interval late, and a burst at page-cache speed fills the headroom in
// less than that; with it, idle images need no fast checks at all.
type waker struct {
	f    *os.File      // read through Go's poller
	fd   int           // f's descriptor for fanotify_mark: f.Fd() would make it blocking
	wake chan struct{} // one pending wake-up is enough

	mu     sync.Mutex // protects byFsid
	byFsid map[[2]int32]*watched
}

// newWaker opens the fanotify group, or returns nil where fanotify cannot
// report modifications by filesystem (the watcher then relies on its
// interval alone).
func newWaker() *waker {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_REPORT_FID|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY)
	if err != nil {
		return nil
	}
	return &waker{f: os.NewFile(uintptr(fd), "fanotify-modify"), fd: fd, wake: make(chan struct{}, 1), byFsid: map[[2]int32]*watched{}}
}

// arm marks iw's filesystem: its next write wakes the watcher.
func (k *waker) arm(iw *watched, fsid [2]int32) {
	if k == nil || iw.armed.Load() {
		return
	}
	if err := unix.FanotifyMark(k.fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, unix.FAN_MODIFY, unix.AT_FDCWD, iw.m.Dir); err != nil {
		return
	}
	k.mu.Lock()
	k.byFsid[fsid] = iw
	k.mu.Unlock()
	iw.fsid = fsid
	iw.armed.Store(true)
}

// disarm removes iw's mark.
func (k *waker) disarm(iw *watched) {
	if k == nil || !iw.armed.Load() {
		return
	}
	// ENOENT: the mark went with an unmount already.
	_ = unix.FanotifyMark(k.fd, unix.FAN_MARK_REMOVE|unix.FAN_MARK_FILESYSTEM, unix.FAN_MODIFY, unix.AT_FDCWD, iw.m.Dir)
	k.mu.Lock()
	if k.byFsid[iw.fsid] == iw {
		delete(k.byFsid, iw.fsid)
	}
	k.mu.Unlock()
	iw.armed.Store(false)
}

// run reads events until the group is closed: each marks its image woken
// and wakes the watcher.
func (k *waker) run(ctx context.Context) {
	buf := make([]byte, 16*1024)
	for {
		n, err := k.f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || ctx.Err() != nil {
				return
			}
			continue
		}
		for _, fsid := range eventFsids(buf[:n]) {
			k.mu.Lock()
			iw := k.byFsid[fsid]
			k.mu.Unlock()
			if iw != nil {
				iw.woken.Store(true)
			}
		}
		select {
		case k.wake <- struct{}{}:
		default:
		}
	}
}

func (k *waker) close() {
	if k != nil {
		k.f.Close()
	}
}

// eventFsids returns the fsid of each event in a buffer read from the
// waker's group; a malformed record ends the list.
func eventFsids(b []byte) [][2]int32 {
	events, _ := fanotify.Parse(b)
	var out [][2]int32
	for _, ev := range events {
		if ev.HasFid {
			out = append(out, ev.Fsid)
		}
	}
	return out
}
