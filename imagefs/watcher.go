package imagefs

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Observer is told what a Watcher did or saw, by image key. Every field is
// optional. Calls come from the watcher's goroutines: keep them short.
type Observer struct {
	// Grew: the window grew by bytes.
	Grew func(key string, bytes int64)
	// Trimmed: bytes freed inside the image went back to the host.
	Trimmed func(key string, bytes int64)
	// Full: a check found no free space left in the window while the
	// balloon still held some: a writer may have seen ENOSPC before the
	// quota. Reported once per episode, with what the check read.
	Full func(key string, f FullWindow)
	// Idle: the image's used space and inode count have not changed for
	// its policy's IdleAfter. Reported once per idle period.
	Idle func(key string)
	// Failed: a check, grow or trim failed.
	Failed func(key string, err error)
	// FlushesDropped: the image's loop device was found dropping cache
	// flushes (its cache mode changed to write through while it was
	// mounted), so fsyncs in the image did not reach the host's disk. err
	// is nil when it was set back to write back, the reason otherwise.
	FlushesDropped func(key, device string, err error)
}

// FullWindow is what a check that found a window full read, for the
// operator to tell a slow grow from a writer faster than the policy allows.
type FullWindow struct {
	Free    int64  // bytes free in the window
	Balloon int64  // bytes the balloon holds
	Dir     string // the image's mount point
	// Rate is the fastest recent write rate (bytes/s), Headroom the free
	// space the policy wanted for it.
	Rate     float64
	Headroom int64
	// Growing is how long the grow or trim running at the time had run
	// (0: none); LastGrow how long the last grow took.
	Growing, LastGrow time.Duration
}

// Watcher keeps the windows of many mounted images ahead of their data from
// one goroutine: every interval it reads each image's free space (a statfs
// and a stat of its balloon, a few microseconds) and grows a window whose
// free space fell below its policy's headroom. Grows and trims run in their
// own goroutine, at most one at a time per image, so a slow image never
// delays the others' checks.
type Watcher struct {
	interval atomic.Int64 // time.Duration
	obs      Observer
	opCtx    context.Context // ends when Run returns

	mu     sync.Mutex
	images map[string]*watched
	list   []*watched // images' values; nil when it must be rebuilt
	wg     sync.WaitGroup
	waker  *waker     // nil without fanotify
	armMu  sync.Mutex // serialises arming and disarming marks
	tick   uint64     // Run's goroutine only
	// opDone, when set (tests), runs after each grow or trim, before the
	// image counts as free for the next one.
	opDone func(key string)
	// cacheEvery is how often each image's loop device has its cache mode
	// read (keepFlushes); tests shorten it.
	cacheEvery time.Duration
}

const (
	// quietAfter is how long an image's used space must stay unchanged
	// before it is checked every other tick only.
	quietAfter = 10 * time.Second
	// balloonEvery is how many checks reuse the balloon size read last.
	balloonEvery = 16
	// cacheModeEvery is how often a check reads the image's loop device's
	// cache mode (a sysfs read, a few microseconds): 300 images cost 30
	// reads a second.
	cacheModeEvery = 10 * time.Second
)

// watched is one image's state between checks. Only the Run goroutine
// touches it, except busy.
type watched struct {
	key   string
	m     *Mounted
	pol   atomic.Pointer[Policy]
	phase uint64 // spreads the checks of quiet images over two ticks

	busy         atomic.Bool  // a grow or trim is running
	opStart      atomic.Int64 // when it started (unix ns)
	lastGrow     atomic.Int64 // how long the last grow took (ns)
	balloonStale atomic.Bool  // the balloon changed since it was read
	paused       atomic.Int32 // repacks running (Repack): no checks
	rebase       atomic.Bool  // a repack ended: start measuring afresh

	checks  uint64
	balloon int64 // bytes, as last read
	// spare is the part of the balloon the window may still grow into:
	// what it holds beyond its floor (see quotaFloor), as last read;
	// quotaFloorBytes is that floor, read again when the balloon is stale.
	spare           int64
	quotaFloorBytes int64
	floorKnown      bool

	// dir is an O_PATH descriptor of the mount point, for fstatfs: a
	// statfs by path spends half its time walking the path. It pins the
	// mount, so Remove (always before an unmount) and the end of Run close
	// it, and so does a check that finds the image no longer mounted there
	// (unmounted lazily by someone else: the descriptor would keep its
	// filesystem, and so its loop device, alive). fdMu protects dir, file
	// and closed.
	fdMu   sync.Mutex
	dir    int
	file   int // O_PATH descriptor of the image file, for fstat
	closed bool
	dev    uint64 // the filesystem's device number (the loop device's), 0 if unknown

	seen      bool
	lastAt    time.Time
	lastUsed  int64
	lastFiles uint64
	rate      float64     // bytes/s: recent fastest growth of used space
	hot       bool        // checked every lane: growing, or short of room
	woken     atomic.Bool // written to since it went cold (the waker)
	// lastWake is when a wake-up last brought the watcher to the image;
	// writingUntil holds an image whose wake-ups come in quick succession
	// (a writer in place: they do not make it hot) on the fast lanes,
	// with its mark off, until then. wakes counts the wake-ups (tests).
	lastWake     time.Time
	writingUntil time.Time
	wakes        atomic.Uint64
	armed        atomic.Bool // the waker's mark is on (set under the watcher's armMu)
	fsid         [2]int32
	changedAt    time.Time
	idleSent     bool
	full         bool
	failing      bool
	// excess is the image file's footprint on the host beyond the used
	// space, as last read; floor is what it was after the last trim (the
	// journal, inode tables and other metadata no trim gives back).
	// floorStale asks the next check to read the floor afresh.
	excess     int64
	floor      int64
	floorStale atomic.Bool
	// trimFloor is the excess a trim read as it ended, for the next
	// check to take (trimDone).
	trimFloor atomic.Int64
	trimDone  atomic.Bool
	followUp  time.Time // a trim after the next journal commit
	// chasing is set while deletions come in a burst: a trim started by
	// the TrimAfter threshold sets it, and a trim that gives less than
	// trimChase(TrimAfter) back to the host ends it. While set, the image
	// is on the fast lanes and each check trims again.
	chasing atomic.Bool
	// cacheAt is when the loop device's cache mode was read last
	// (keepFlushes).
	cacheAt time.Time
}

// fullBelow is the free space under which a window counts as full: less
// than one ordinary write() can use.
const fullBelow = 1 << 20

// trimFollowUp is how long after a trim a second one catches blocks freed
// while it ran: frees are trimmable only once their transaction commits,
// and each trim commits first.
const trimFollowUp = time.Second

// Trims chase a burst of deletions (an rm -rf, a log rotation, a directory
// swapped for a new one). A trim gives back only what was freed before its
// own journal commit; what the burst frees after it sits on the host until
// the next trim, and the TrimAfter threshold alone would wait for another
// TrimAfter of it, or for the follow-up a second later: a footprint read
// right after the container's sync then held up to TrimAfter and more of
// deleted blocks (measured: 162 MiB for 127 MiB used, bench-churn's mixed
// workload). So a trim started by the threshold starts a chase: the image
// is checked on the fast lanes and trimmed again at each check, for as
// long as each trim gives at least trimChase(TrimAfter) back to the host.
// And until the follow-up a second after the last trim, a trim starts once
// trimChase(TrimAfter) more is deleted, not TrimAfter. Both cost a journal
// commit per trim, and only while deletions keep coming.
func trimChase(trimAfter int64) int64 { return max(trimAfter/16, 256<<10) }

// NewWatcher returns a watcher checking every interval. Run starts it.
func NewWatcher(interval time.Duration, obs Observer) *Watcher {
	w := &Watcher{obs: obs, images: map[string]*watched{}, opCtx: context.Background(), waker: newWaker(), cacheEvery: cacheModeEvery}
	w.SetInterval(interval)
	return w
}

// SetInterval changes the check interval from the next check on.
func (w *Watcher) SetInterval(d time.Duration) {
	if d <= 0 {
		d = 100 * time.Millisecond
	}
	w.interval.Store(int64(d))
}

// Add watches the image mounted as m under key with policy p, or changes
// the policy of an image watched under key already.
func (w *Watcher) Add(key string, m *Mounted, p Policy) {
	w.mu.Lock()
	defer w.mu.Unlock()
	iw, ok := w.images[key]
	if !ok {
		iw = &watched{key: key, m: m, phase: uint64(len(w.images)), dir: -1, file: -1, dev: deviceNumber(m.Device)}
		iw.cacheAt = time.Now() // Attach, or the start-up's converge, has just looked at the cache mode
		iw.balloonStale.Store(true)
		iw.floorStale.Store(true)
		w.images[key] = iw
		w.list = nil
	}
	iw.pol.Store(&p)
}

// SetPolicy changes the policy of the image watched under key, if any.
func (w *Watcher) SetPolicy(key string, p Policy) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if iw, ok := w.images[key]; ok {
		iw.pol.Store(&p)
	}
}

// Repack runs fn, a repack of the image under key by someone else, with
// the image's checks paused: the balloon filling up while fn runs is no
// writer and no full window. The image is read afresh after, balloon
// included, as if it had just been added.
func (w *Watcher) Repack(key string, fn func() error) error {
	w.mu.Lock()
	iw := w.images[key]
	w.mu.Unlock()
	if iw == nil {
		return fn()
	}
	iw.paused.Add(1)
	defer func() {
		iw.rebase.Store(true)
		iw.balloonStale.Store(true)
		iw.floorStale.Store(true)
		iw.paused.Add(-1)
	}()
	return fn()
}

// Remove stops watching key. A grow or trim already running finishes.
// The watcher holds nothing open on the image once Remove returns, so it
// can be unmounted.
func (w *Watcher) Remove(key string) {
	w.mu.Lock()
	iw := w.images[key]
	delete(w.images, key)
	w.list = nil
	w.mu.Unlock()
	if iw != nil {
		w.disarm(iw)
		iw.closeDir()
	}
}

// disarm removes iw's wake-up mark, from any goroutine.
func (w *Watcher) disarm(iw *watched) {
	w.armMu.Lock()
	defer w.armMu.Unlock()
	w.waker.disarm(iw)
}

// arm sets iw's wake-up mark, unless iw was removed meanwhile; fsid is
// what its check just read.
func (w *Watcher) arm(iw *watched, fsid [2]int32) {
	w.armMu.Lock()
	defer w.armMu.Unlock()
	iw.fdMu.Lock()
	closed := iw.closed
	iw.fdMu.Unlock()
	if !closed {
		w.waker.arm(iw, fsid)
	}
}

// closeDir closes the descriptors for good.
func (iw *watched) closeDir() {
	iw.fdMu.Lock()
	defer iw.fdMu.Unlock()
	iw.releaseLocked()
	iw.closed = true
}

// release closes the descriptors; the next check opens them again.
func (iw *watched) release() {
	iw.fdMu.Lock()
	defer iw.fdMu.Unlock()
	iw.releaseLocked()
}

func (iw *watched) releaseLocked() {
	if iw.dir >= 0 {
		unix.Close(iw.dir)
		iw.dir = -1
	}
	if iw.file >= 0 {
		unix.Close(iw.file)
		iw.file = -1
	}
}

// deviceNumber is the device number of a block device node, 0 when it
// cannot be read.
func deviceNumber(device string) uint64 {
	var st unix.Stat_t
	if device == "" || unix.Stat(device, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0
	}
	return st.Rdev
}

// mountedHere reports whether the filesystem at path is the image's, as
// far as its device number tells.
func (iw *watched) mountedHere(st *unix.Stat_t) bool {
	return iw.dev == 0 || st.Dev == iw.dev
}

// goneFromDir reports whether the image is no longer mounted at its
// mount point (someone else unmounted it).
func (iw *watched) goneFromDir() bool {
	var st unix.Stat_t
	return iw.dev != 0 && (unix.Stat(iw.m.Dir, &st) != nil || !iw.mountedHere(&st))
}

// footprint is the image file's allocated bytes on the host, read through
// its descriptor, opened on first use.
func (iw *watched) footprint() (int64, error) {
	iw.fdMu.Lock()
	defer iw.fdMu.Unlock()
	if iw.closed {
		return 0, ErrNotMounted
	}
	if iw.file < 0 {
		fd, err := unix.Open(iw.m.Image, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, err
		}
		iw.file = fd
	}
	var st unix.Stat_t
	if err := unix.Fstat(iw.file, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// statfs reads the image's filesystem figures through its descriptor,
// opened on first use.
func (iw *watched) statfs(sfs *unix.Statfs_t) error {
	iw.fdMu.Lock()
	defer iw.fdMu.Unlock()
	if iw.closed {
		return ErrNotMounted
	}
	if iw.dir < 0 {
		fd, err := unix.Open(iw.m.Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || !iw.mountedHere(&st) {
			unix.Close(fd)
			return errors.Join(err, fmt.Errorf("%s is not mounted on %s: %w", iw.m.Image, iw.m.Dir, ErrNotMounted))
		}
		iw.dir = fd
	}
	return unix.Fstatfs(iw.dir, sfs)
}

// Len is the number of images watched.
func (w *Watcher) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.images)
}

// hotLanes is how many times per interval hot images are checked: an image
// whose used space grew since its last check, or whose free space is below
// its headroom, is checked every interval/hotLanes, so a writer at
// page-cache speed meets a grow within milliseconds rather than a whole
// interval. Idle images cost nothing more.
const hotLanes = 5

// writingHold is how long an image woken twice within an interval stays
// on the fast lanes with its wake-up mark off. A writer that overwrites in
// place (a database: its used space does not grow, so it never makes the
// image hot) would otherwise raise a fanotify event, and a wake-up and a
// check of the watcher, for nearly every write: measured, an in-place
// fsync'd 4 KiB writer raised about one event per write, and a reader of
// those events cost it 7-12% of its rate (design.md, "Hot images and the
// waker"). Held on the fast lanes it is checked as often as a hot image,
// so a writer that starts to take space is seen as soon as by a mark, and
// the mark is set again when the hold ends: a writer still at work wakes
// the watcher at once, and is held again.
const writingHold = time.Second

// fast reports whether iw is checked on every lane: hot, held there as a
// writer in place, or chasing a burst of deletions.
func (iw *watched) fast(now time.Time) bool {
	return iw.hot || now.Before(iw.writingUntil) || iw.chasing.Load()
}

// Run checks every image each interval, and hot images hotLanes times as
// often, until ctx ends, then waits for the grows and trims it started.
func (w *Watcher) Run(ctx context.Context) {
	w.opCtx = ctx
	defer w.wg.Wait()
	defer func() { // nothing stays open on the images
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, iw := range w.images {
			iw.closeDir()
		}
	}()
	t := time.NewTimer(0)
	defer t.Stop()
	var wake <-chan struct{}
	if w.waker != nil {
		wake = w.waker.wake
		go w.waker.run(ctx)
		defer w.waker.close()
	}
	lane := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
			// A cold image was written to: check it now, and keep the
			// fast lanes going while it is hot.
			if w.checkHot(time.Now()) && lane == 0 {
				lane = 1
				t.Reset(time.Duration(w.interval.Load()) / hotLanes)
			}
		case now := <-t.C:
			var hot bool // any image on the fast lanes
			if lane == 0 {
				hot = w.checkAll(now)
			} else {
				hot = w.checkHot(now)
			}
			// The fast lanes run only while an image is hot: a timer
			// firing hotLanes times as often costs an idle daemon more
			// than its checks (measured: 0.55% of a core became 1.2%).
			interval := time.Duration(w.interval.Load())
			if hot {
				lane = (lane + 1) % hotLanes
				t.Reset(interval / hotLanes)
			} else {
				lane = 0
				t.Reset(interval)
			}
		}
	}
}

// checkHot checks the images woken since and those the last check put
// on the fast lanes, and reports whether any is on them still.
func (w *Watcher) checkHot(now time.Time) bool {
	w.mu.Lock()
	list := w.list
	w.mu.Unlock()
	hot := false
	for _, iw := range list {
		if woke := iw.woken.Swap(false); woke || iw.fast(now) {
			w.check(iw.key, iw, now, woke)
			hot = hot || iw.fast(now)
		}
	}
	return hot
}

// checkAll checks every image (quiet ones every other time) and reports
// whether any is hot.
func (w *Watcher) checkAll(now time.Time) bool {
	w.mu.Lock()
	if w.list == nil {
		w.list = make([]*watched, 0, len(w.images))
		for _, iw := range w.images {
			w.list = append(w.list, iw)
		}
	}
	list := w.list
	w.mu.Unlock()
	w.tick++
	hot := false
	for _, iw := range list {
		// An image quiet for a while is checked every other tick: half
		// the cost with hundreds of idle images, and a writer waking up
		// is still seen within two intervals.
		woke := iw.woken.Swap(false)
		if !woke && iw.seen && now.Sub(iw.changedAt) >= quietAfter && (w.tick+iw.phase)%2 != 0 {
			continue
		}
		w.check(iw.key, iw, now, woke)
		hot = hot || iw.fast(now)
	}
	return hot
}

// check reads one image's free space and starts what it needs; woke says
// a write woke the watcher for it.
func (w *Watcher) check(key string, iw *watched, now time.Time, woke bool) {
	if iw.paused.Load() > 0 {
		return
	}
	if iw.rebase.Swap(false) {
		iw.seen = false
	}
	// A grow or trim running now changes the balloon under the check: the
	// used space it reads may count part of what the grow released as
	// freed by the container, and the next check would take it back as a
	// burst of writes. Such a check measures no rate (read before the
	// statfs: no op starts but from this goroutine).
	opRunning := iw.busy.Load()
	var sfs unix.Statfs_t
	err := iw.statfs(&sfs)
	// The balloon changes only by a grow or a repack: its size is read
	// again after one of the watcher's own operations, and every
	// balloonEvery checks for the others (a repack by the snapshotter or
	// the CLI).
	if stale := iw.balloonStale.Load(); err == nil && (stale || iw.checks%balloonEvery == 0) {
		var bst unix.Stat_t
		if err = unix.Stat(balloonPath(iw.m.Dir), &bst); err == nil && !iw.mountedHere(&bst) {
			err = fmt.Errorf("%s is not mounted on %s: %w", iw.m.Image, iw.m.Dir, ErrNotMounted)
		}
		if err == nil {
			iw.balloon = bst.Blocks * 512
			// The quota changes only through a repack (SetQuota), which
			// marks the balloon stale: the periodic reads reuse it.
			if stale || !iw.floorKnown {
				iw.quotaFloorBytes, iw.floorKnown = iw.quotaFloor(&sfs), true
			}
			iw.spare = iw.balloon - iw.quotaFloorBytes
			iw.balloonStale.Store(false)
		}
	}
	iw.checks++
	gone := err != nil && iw.goneFromDir()
	if gone {
		err = fmt.Errorf("not mounted on %s any more, unmounted outside snug: %w", iw.m.Dir, ErrNotMounted)
	}
	if err != nil {
		// Once per episode: an image unmounted by hand fails every check.
		if !iw.failing {
			w.failed(key, fmt.Errorf("check %s: %w", iw.m.Image, err))
		}
		iw.failing = true
		iw.chasing.Store(false) // no trim to chase with
		if gone {
			// Unmounted by someone else (umount -l: a plain umount
			// finds the image busy while it is watched). Let go of it,
			// after the report, so its filesystem ends and autoclear
			// detaches its loop device. The checks go on failing
			// quietly: mounted again by hand it is on a new loop
			// device, which snug takes up at its next start.
			iw.release()
		}
		return
	}
	iw.failing = false
	w.keepFlushes(key, iw, now)
	bsize := sfs.Bsize
	balloon := iw.balloon
	free := int64(sfs.Bavail) * bsize
	used := int64(sfs.Blocks-sfs.Bfree)*bsize - balloon
	pol := *iw.pol.Load()
	growing := iw.seen && used > iw.lastUsed

	switch {
	case opRunning:
		growing = iw.seen && iw.hot // as the last check saw it
	case iw.seen:
		dt := now.Sub(iw.lastAt).Seconds()
		// The write rate is how fast used space grows (ext4 counts delayed
		// allocations as used at write() time). Free space is no measure:
		// a repack fills the balloon, and that is no writer.
		if grew := used - iw.lastUsed; grew > 0 && dt > 0 {
			iw.rate = max(float64(grew)/dt, iw.rate*0.5) // follow bursts at once, forget them slowly
		} else {
			iw.rate *= 0.5
		}
		if used != iw.lastUsed || sfs.Ffree != iw.lastFiles {
			iw.changedAt, iw.idleSent = now, false
		}
	default:
		iw.seen, iw.changedAt = true, now
	}
	if !opRunning {
		iw.lastAt, iw.lastUsed, iw.lastFiles = now, used, sfs.Ffree
	}
	// The footprint tells what the trim can give back: a deletion shows
	// in it, and so do writes into space freed but not trimmed yet, where
	// the used space only shows the net of writes and deletions (a
	// directory replaced between two checks leaves it as it was). An
	// image quiet for quietAfter has nothing new to trim: it is read
	// every balloonEvery checks only, so idle images cost no more.
	followUp := !iw.followUp.IsZero() && now.After(iw.followUp)
	quiet := now.Sub(iw.changedAt) >= quietAfter && !followUp && !iw.trimDone.Load() && !iw.floorStale.Load()
	if !quiet || iw.checks%balloonEvery == 0 {
		if fp, err := iw.footprint(); err == nil {
			iw.excess = fp - used
			switch {
			case iw.trimDone.Swap(false):
				iw.floor = iw.trimFloor.Load()
				iw.floorStale.Store(false)
			case iw.floorStale.CompareAndSwap(true, false):
				iw.floor = iw.excess
			}
		}
	}

	want := pol.headroomFor(used, iw.rate)
	if free < fullBelow && iw.spare > 0 {
		if !iw.full && w.obs.Full != nil {
			f := FullWindow{Free: free, Balloon: balloon, Dir: iw.m.Dir, Rate: iw.rate, Headroom: want,
				LastGrow: time.Duration(iw.lastGrow.Load())}
			if opRunning {
				f.Growing = now.Sub(time.Unix(0, iw.opStart.Load()))
			}
			w.obs.Full(key, f)
		}
		iw.full = true
	} else {
		iw.full = false
	}
	if iw.seen && pol.IdleAfter > 0 && !iw.idleSent && now.Sub(iw.changedAt) >= pol.IdleAfter {
		iw.idleSent = true
		if w.obs.Idle != nil {
			w.obs.Idle(key)
		}
	}

	short := free < want-growSlack(want)
	iw.hot = iw.spare > 0 && (growing || short)
	if woke {
		iw.wakes.Add(1)
		if !iw.hot && now.Sub(iw.lastWake) < time.Duration(w.interval.Load()) {
			iw.writingUntil = now.Add(writingHold)
		}
		iw.lastWake = now
	}
	if iw.fast(now) && iw.armed.Load() {
		w.disarm(iw)
	} else if !iw.fast(now) && !iw.armed.Load() && w.waker != nil {
		w.arm(iw, sfs.Fsid.Val)
	}
	if short && iw.spare > 0 {
		w.start(key, iw, func(ctx context.Context) {
			start := time.Now()
			grown, err := iw.m.EnsureFree(ctx, want)
			iw.lastGrow.Store(int64(time.Since(start)))
			if grown > 0 && w.obs.Grew != nil {
				w.obs.Grew(key, grown)
			}
			if err != nil {
				w.failed(key, err)
			}
		})
		return
	}
	if pol.TrimAfter <= 0 {
		iw.chasing.Store(false) // trims turned off mid-chase (SetPolicy)
	}
	// Within a second of a trim the threshold is a chase step: the rest
	// of a burst that paused longer than a chase (a log rotated, then a
	// directory deleted a moment later) goes back at the check that sees
	// it, not with the follow-up.
	threshold := pol.TrimAfter
	if !iw.followUp.IsZero() && now.Before(iw.followUp) {
		threshold = trimChase(pol.TrimAfter)
	}
	trimNow := pol.TrimAfter > 0 && iw.excess-iw.floor >= threshold
	chase := iw.chasing.Load()
	if trimNow || chase || followUp {
		if trimNow {
			// On the fast lanes from now: the trim's result decides
			// whether the chase goes on.
			iw.chasing.Store(true)
		}
		if w.start(key, iw, func(ctx context.Context) {
			fp0, ferr0 := iw.footprint()
			n, err := iw.m.Trim(ctx)
			// The floor is read as the trim ends: read at the next check,
			// it would take in what was deleted meanwhile.
			var after unix.Statfs_t
			fp, ferr := iw.footprint()
			if serr := iw.statfs(&after); serr == nil && ferr == nil {
				iw.trimFloor.Store(fp - (int64(after.Blocks-after.Bfree)*after.Bsize - balloon))
				iw.trimDone.Store(true)
			} else {
				iw.floorStale.Store(true)
			}
			// The chase goes on while trims find deletions: the host
			// file shrank by a chase step at least.
			iw.chasing.Store(err == nil && ferr0 == nil && ferr == nil && fp0-fp >= trimChase(pol.TrimAfter))
			if n > 0 && w.obs.Trimmed != nil {
				w.obs.Trimmed(key, n)
			}
			if err != nil {
				w.failed(key, err)
			}
		}) {
			iw.followUp = time.Time{}
			if trimNow || chase {
				iw.followUp = now.Add(trimFollowUp)
			}
		}
	}
}

// keepFlushes reads the image's loop device's cache mode every cacheEvery
// and, should it have been set to write through since the image was
// attached (by an operator, a tuning tool: the kernel then completes every
// flush unsent), sets it back with KeepFlushes and reports it. Attach
// checked it once; this keeps it so for as long as the image is mounted.
func (w *Watcher) keepFlushes(key string, iw *watched, now time.Time) {
	// A read-only image has nothing to flush.
	if iw.m.ReadOnly || iw.m.Device == "" || now.Sub(iw.cacheAt) < w.cacheEvery {
		return
	}
	iw.cacheAt = now
	// A device gone (its mode unreadable) is the mount check's to report.
	if found, err := keepFlushes(w.opCtx, iw.m.Device); found && w.obs.FlushesDropped != nil {
		w.obs.FlushesDropped(key, iw.m.Device, err)
	}
}

// quotaFloor is the least the balloon holds for the image's quota, 0 when
// no quota is recorded (it is the ceiling) or it cannot be read.
func (iw *watched) quotaFloor(sfs *unix.Statfs_t) int64 {
	buf := make([]byte, 32)
	n, err := unix.Getxattr(balloonPath(iw.m.Dir), quotaXattr, buf)
	if err != nil {
		return 0
	}
	q, err := parseQuota(string(buf[:n]))
	if err != nil {
		return 0
	}
	return quotaFloor(sfs, q, reserveBytes(filepath.Join("/sys/fs/ext4", iw.m.sysfsName()), sfs.Bsize))
}

// start runs op for iw in its own goroutine unless one runs already.
func (w *Watcher) start(key string, iw *watched, op func(ctx context.Context)) bool {
	if !iw.busy.CompareAndSwap(false, true) {
		return false
	}
	iw.opStart.Store(time.Now().UnixNano())
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer iw.busy.Store(false)
		defer iw.balloonStale.Store(true)
		// Bounded: an image locked by a long repack is retried next check.
		ctx, cancel := context.WithTimeout(w.opCtx, 5*time.Second)
		defer cancel()
		op(ctx)
		if w.opDone != nil {
			w.opDone(key)
		}
	}()
	return true
}

func (w *Watcher) failed(key string, err error) {
	if w.obs.Failed != nil {
		w.obs.Failed(key, err)
	}
}
