package imagefs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/roottest"
)

// counts are what a watcher reported.
type counts struct {
	grown, trimmed     int64
	idle, full, failed int
}

// events records what a watcher reports, for tests.
type events struct {
	mu sync.Mutex
	counts
}

func (e *events) observer(t *testing.T) Observer {
	return Observer{
		Grew:    func(_ string, n int64) { e.mu.Lock(); e.grown += n; e.mu.Unlock() },
		Trimmed: func(_ string, n int64) { e.mu.Lock(); e.trimmed += n; e.mu.Unlock() },
		Idle:    func(string) { e.mu.Lock(); e.idle++; e.mu.Unlock() },
		Full:    func(string, FullWindow) { e.mu.Lock(); e.full++; e.mu.Unlock() },
		Failed: func(_ string, err error) {
			e.mu.Lock()
			e.failed++
			e.mu.Unlock()
			t.Logf("watcher: %v", err)
		},
	}
}

func (e *events) get() counts {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.counts
}

func runWatcher(t *testing.T, w *Watcher) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// waitFor polls cond for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// watchedImage is a mounted 1 GiB image with a 256 MiB window, watched
// every 20 ms until the test ends, and what the watcher reports.
func watchedImage(t *testing.T) (path string, m *Mounted, ev *events) {
	path, dir := newImage(t, gib, 256*mib)
	m = mountImage(t, path, dir)
	ev = &events{}
	w := NewWatcher(20*time.Millisecond, ev.observer(t))
	w.Add("img", m, Policy{Headroom: 64 * mib, TrimAfter: 8 * mib})
	runWatcher(t, w)
	return path, m, ev
}

// handCheckedImage is a mounted 1 GiB image with a 256 MiB window, watched
// with the given TrimAfter by a watcher that never runs: its checks are the
// test's calls of w.check on iw.
func handCheckedImage(t *testing.T, trimAfter int64) (path string, m *Mounted, w *Watcher, iw *watched, ev *events) {
	path, dir := newImage(t, gib, 256*mib)
	m = mountImage(t, path, dir)
	ev = &events{}
	w = NewWatcher(time.Hour, ev.observer(t))
	w.Add("img", m, Policy{Headroom: 64 * mib, TrimAfter: trimAfter})
	t.Cleanup(func() { w.Remove("img") }) // before the unmount
	return path, m, w, w.images["img"], ev
}

// TestWatcherTrimsWhatARunningContainerDeletes: deleted files go back to the
// host while the image stays mounted and in use, without a Reclaim.
func TestWatcherTrimsWhatARunningContainerDeletes(t *testing.T) {
	path, m, ev := watchedImage(t)

	data := filepath.Join(m.Dir, "data")
	writeFiles(t, data, 20, 5*mib)
	roottest.Syncfs(t, m.Dir)
	full := fileFootprint(t, path)
	if err := os.RemoveAll(data); err != nil {
		t.Fatal(err)
	}
	// No sync: the trim commits the frees itself.
	t.Logf("footprint %d MiB with 100 MiB of files", full>>20)
	// The Trimmed report comes after FITRIM returns, a moment after the
	// footprint drops.
	if !waitFor(3*time.Second, func() bool { return fileFootprint(t, path) < full-90*mib && ev.get().trimmed > 0 }) {
		t.Fatalf("footprint %d MiB three seconds after deleting 100 MiB (was %d MiB); events %+v",
			fileFootprint(t, path)>>20, full>>20, ev.get())
	}
	if got := ev.get(); got.trimmed < 90*mib || got.failed != 0 {
		t.Fatalf("events %+v: want at least 90 MiB trimmed and no failure", got)
	}
}

// TestWatcherTrimsDeletionsHiddenByWrites: a directory replaced between
// two checks leaves the used space as it was, but not the footprint: the
// blocks of the old files are still allocated on the host. The watcher
// follows the footprint, so it trims them anyway.
func TestWatcherTrimsDeletionsHiddenByWrites(t *testing.T) {
	path, m, w, iw, ev := handCheckedImage(t, 8*mib)
	writeFiles(t, filepath.Join(m.Dir, "old"), 10, 5*mib)
	roottest.Syncfs(t, m.Dir)
	w.check("img", iw, time.Now(), false) // reads the floor
	before := fileFootprint(t, path)
	// Checks run here only when the test calls them: between these two,
	// 50 MiB are deleted and 50 MiB written.
	if err := os.RemoveAll(filepath.Join(m.Dir, "old")); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, filepath.Join(m.Dir, "new"), 10, 5*mib)
	roottest.Syncfs(t, m.Dir)
	grown := fileFootprint(t, path)
	t.Logf("footprint %d MiB before, %d MiB after the swap", before>>20, grown>>20)
	w.check("img", iw, time.Now().Add(100*time.Millisecond), false)
	w.wg.Wait()
	if got := fileFootprint(t, path); got > before+8*mib || ev.get().trimmed < 40*mib {
		t.Fatalf("footprint %d MiB after the check (%d before the swap, %d after); events %+v", got>>20, before>>20, grown>>20, ev.get())
	}
}

// TestWatcherReportsIdleOncePerPeriod: an image that does not change is
// reported idle once; a change starts a new period.
func TestWatcherReportsIdleOncePerPeriod(t *testing.T) {
	path, dir := newImage(t, 256*mib, 64*mib)
	m := mountImage(t, path, dir)
	var ev events
	w := NewWatcher(10*time.Millisecond, ev.observer(t))
	w.Add("img", m, Policy{Headroom: 16 * mib, IdleAfter: 150 * time.Millisecond})
	runWatcher(t, w)
	if !waitFor(2*time.Second, func() bool { return ev.get().idle == 1 }) {
		t.Fatalf("events %+v: want one idle report", ev.get())
	}
	time.Sleep(300 * time.Millisecond)
	if got := ev.get().idle; got != 1 {
		t.Fatalf("%d idle reports without a change, want 1", got)
	}
	writeFiles(t, filepath.Join(m.Dir, "data"), 4, mib)
	roottest.Syncfs(t, m.Dir)
	if !waitFor(2*time.Second, func() bool { return ev.get().idle == 2 }) {
		t.Fatalf("events %+v: want a second idle report after a write", ev.get())
	}
}

// TestWatcherReportsAFullWindow: a writer that exhausts the window faster
// than the policy allows for is reported, once per episode.
func TestWatcherReportsAFullWindow(t *testing.T) {
	path, dir := newImage(t, gib, 64*mib)
	m := mountImage(t, path, dir)
	st, err := m.Stat()
	if err != nil {
		t.Fatal(err)
	}
	// Fill the window before the watcher starts: it then finds it full.
	f, err := os.Create(filepath.Join(m.Dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, mib)
	for range st.FreeBytes / mib {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	f.Close()
	roottest.Syncfs(t, m.Dir)
	var ev events
	w := NewWatcher(10*time.Millisecond, ev.observer(t))
	w.Add("img", m, Policy{Headroom: 32 * mib})
	runWatcher(t, w)
	if !waitFor(2*time.Second, func() bool { g := ev.get(); return g.full == 1 && g.grown > 0 }) {
		t.Fatalf("events %+v: want one full report and a grow", ev.get())
	}
}

// TestWatcherTakesNoGrowForAWrite: checks made while a grow runs see the
// balloon shrink under them; they must not take what it released for a
// burst of writes and grow the window again by far more (seen under a
// burst of writes: the window grew to the quota at once).
func TestWatcherTakesNoGrowForAWrite(t *testing.T) {
	path, dir := newImage(t, gib, 32*mib)
	m := mountImage(t, path, dir)
	var ev events
	w := NewWatcher(10*time.Millisecond, ev.observer(t))
	w.opDone = func(string) { time.Sleep(25 * time.Millisecond) } // a check or two see each grow running
	const headroom = 64 * mib
	w.Add("img", m, Policy{Headroom: headroom, Burst: 500 * time.Millisecond})
	runWatcher(t, w)
	if !waitFor(2*time.Second, func() bool { return ev.get().grown > 0 }) {
		t.Fatalf("events %+v: want a grow", ev.get())
	}
	time.Sleep(500 * time.Millisecond) // checks after the grow, where a false burst would show
	st, err := m.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if g := ev.get(); g.grown > headroom+8*mib || st.FreeBytes > headroom+8*mib {
		t.Errorf("grew %d bytes, %d free: want the window grown to the %d MiB headroom, no further", g.grown, st.FreeBytes, headroom/mib)
	}
}

// TestReclaimWithMarginLeavesRoomToWrite: a reclaim of a running image keeps
// its margin free throughout, and still gives the deleted space back.
func TestReclaimWithMarginLeavesRoomToWrite(t *testing.T) {
	path, dir := newImage(t, gib, 256*mib)
	m := mountImage(t, path, dir)
	writeFiles(t, filepath.Join(m.Dir, "keep"), 4, 5*mib)
	writeFiles(t, filepath.Join(m.Dir, "gone"), 30, 5*mib)
	roottest.Syncfs(t, m.Dir)
	if err := os.RemoveAll(filepath.Join(m.Dir, "gone")); err != nil {
		t.Fatal(err)
	}
	// A writer during the reclaim must never see ENOSPC.
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, 64*kib)
		f, err := os.Create(filepath.Join(m.Dir, "during"))
		if err != nil {
			werr <- err
			return
		}
		defer f.Close()
		for n := 0; ; n++ {
			select {
			case <-stop:
				werr <- nil
				return
			default:
			}
			if _, err := f.WriteAt(buf, int64(n%64)*int64(len(buf))); err != nil {
				werr <- err
				return
			}
		}
	}()
	res, err := m.Reclaim(context.Background(), ReclaimOptions{Headroom: 16 * mib, Margin: 64 * mib})
	close(stop)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("writer during a reclaim with margin: %v", err)
	}
	st, err := m.Stat()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("reclaim: %+v; after: free %d MiB, window %d MiB", res, st.FreeBytes>>20, st.WindowBytes>>20)
	if res.Gain() < 100*mib {
		t.Fatalf("gave back %d MiB, want at least 100 (150 MiB were deleted)", res.Gain()>>20)
	}
	if st.FreeBytes < 60*mib {
		t.Fatalf("free after reclaim %d MiB, want at least the 64 MiB margin (less ext4's reserve)", st.FreeBytes>>20)
	}
}

// TestWatcherRepackIsNoWriter: a repack through Repack fills the balloon
// for a moment; the watcher must neither report the window full nor take
// the balloon's growth for a burst and grow the window back after.
func TestWatcherRepackIsNoWriter(t *testing.T) {
	path, dir := newImage(t, gib, 512*mib)
	m := mountImage(t, path, dir)
	var ev events
	w := NewWatcher(5*time.Millisecond, ev.observer(t))
	w.Add("img", m, Policy{Headroom: 32 * mib, Burst: time.Second})
	runWatcher(t, w)
	time.Sleep(50 * time.Millisecond)
	before := ev.get()
	err := w.Repack("img", func() error {
		_, err := m.Reclaim(context.Background(), ReclaimOptions{Headroom: 32 * mib})
		time.Sleep(50 * time.Millisecond) // ten checks while the balloon is full
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	st, err := m.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.get(); got.full != before.full || got.grown != before.grown {
		t.Errorf("events around a repack: %+v -> %+v; want no full window and no grow", before, got)
	}
	if st.WindowBytes > 128*mib {
		t.Errorf("window %d MiB after a repack to 32 MiB of headroom", st.WindowBytes>>20)
	}
}

// TestWriteWakesTheWatcher: with an interval of an hour, nothing but the
// waker can bring the watcher back to an image after its first check; a
// write into the cold image makes it grow its window all the same.
func TestWriteWakesTheWatcher(t *testing.T) {
	path, dir := newImage(t, 1*gib, 64*mib)
	m := mountImage(t, path, dir)
	var e events
	if _, err := m.EnsureFree(context.Background(), 64*mib); err != nil { // cold at its first check
		t.Fatal(err)
	}
	w := NewWatcher(time.Hour, e.observer(t))
	if w.waker == nil {
		t.Fatal("fanotify cannot report modifications here")
	}
	w.Add("img", m, Policy{Headroom: 64 * mib})
	runWatcher(t, w)
	// The first check finds it cold and arms the mark.
	waitArmed(t, w, "img")
	// Write most of the headroom, each write more than the slack
	// (growSlack: the check a wake brings must find the window short, as
	// the next check is an hour away): the window must grow.
	f, err := os.Create(filepath.Join(m.Dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	for i := 0; i < 12; i++ {
		if _, err := f.Write(buf); err != nil {
			t.Fatalf("write %d MiB: %v", 4*i, err)
		}
	}
	for end := time.Now().Add(10 * time.Second); e.get().grown == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("a write into a cold image did not wake the watcher")
		}
	}
}

// TestInPlaceWriterRaisesFewWakeUps: a writer overwriting a file in place
// with an fsync after each 4 KiB (a database) never makes its image hot,
// and wakes the watcher through the waker's mark. The watcher holds such an
// image on the fast lanes with its mark off, so the writer raises a couple
// of wake-ups a second, not one per write; and a write that then takes
// space is still met by a grow at once.
func TestInPlaceWriterRaisesFewWakeUps(t *testing.T) {
	path, dir := newImage(t, 1*gib, 64*mib)
	m := mountImage(t, path, dir)
	var e events
	if _, err := m.EnsureFree(context.Background(), 64*mib); err != nil {
		t.Fatal(err)
	}
	// An interval of a second: as cold images are checked in production,
	// but slower, so that the checks a test run sees are few.
	w := NewWatcher(time.Second, e.observer(t))
	if w.waker == nil {
		t.Fatal("fanotify cannot report modifications here")
	}
	f, err := os.Create(filepath.Join(m.Dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	if _, err := f.WriteAt(make([]byte, 4*mib), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	w.Add("img", m, Policy{Headroom: 64 * mib})
	runWatcher(t, w)
	waitArmed(t, w, "img")

	const seconds = 3
	writes := 0
	for end := time.Now().Add(seconds * time.Second); time.Now().Before(end); writes++ {
		if _, err := f.WriteAt(page, int64(writes%1024)*4096); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	w.mu.Lock()
	iw := w.images["img"]
	w.mu.Unlock()
	wakes := iw.wakes.Load()
	t.Logf("%d fsync'd overwrites in %d s woke the watcher %d times", writes, seconds, wakes)
	if writes < 100 {
		t.Fatalf("only %d writes in %d s: too few to tell", writes, seconds)
	}
	if wakes > 3*seconds {
		t.Errorf("%d wake-ups for %d in-place writes in %d s, want at most %d", wakes, writes, seconds, 3*seconds)
	}

	// The writer now takes space: the window grows as for any writer.
	buf := make([]byte, 1<<20)
	for i := 0; i < 48; i++ {
		if _, err := f.WriteAt(buf, 4*mib+int64(i)<<20); err != nil {
			t.Fatalf("write %d MiB: %v", i, err)
		}
	}
	for end := time.Now().Add(10 * time.Second); e.get().grown == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the writer took space and the window did not grow")
		}
	}
}

// waitArmed waits until the watcher's first check has armed key's mark.
func waitArmed(t *testing.T, w *Watcher, key string) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		w.armMu.Lock()
		armed := w.images[key].armed.Load()
		w.armMu.Unlock()
		if armed {
			return
		}
		if time.Now().After(end) {
			t.Fatal("the image was never armed")
		}
	}
}

func FuzzEventFsids(f *testing.F) {
	f.Add(make([]byte, 24))
	f.Add([]byte{48, 0, 0, 0, 3, 0, 24, 0, 2, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0, 1, 0, 24, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if n := len(eventFsids(b)); n > len(b)/24 {
			t.Fatalf("%d fsids from %d bytes", n, len(b))
		}
	})
}

// TestWatcherLetsGoOfAnImageUnmountedElsewhere: the watcher's descriptor
// on a mount point pins the mount. An image someone else unmounts lazily
// (umount -l; a plain umount finds it busy while it is watched) must not
// stay attached to its loop device for as long as snug runs: the watcher
// notices, lets go, and autoclear detaches the device.
func TestWatcherLetsGoOfAnImageUnmountedElsewhere(t *testing.T) {
	path, m, ev := watchedImage(t)
	time.Sleep(100 * time.Millisecond) // a few checks: the descriptors are open

	if err := unix.Unmount(m.Dir, 0); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("plain unmount of a watched image: %v, want EBUSY", err)
	}
	if err := unix.Unmount(m.Dir, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool { a, err := IsAttached(path); return err == nil && !a }) {
		devs, _ := FindLoops(path)
		t.Fatalf("image still attached to %v after its lazy unmount", devs)
	}
	if ev.get().failed == 0 {
		t.Error("the watcher did not report the image gone")
	}
}

// TestWatcherLetsSmallWritesIntoTheHeadroom: a write that takes less than
// the slack (growSlack) out of the headroom does not make the watcher grow
// the window; one that takes more has it grown back to the whole headroom.
func TestWatcherLetsSmallWritesIntoTheHeadroom(t *testing.T) {
	path, dir := newImage(t, gib, 32*mib)
	m := mountImage(t, path, dir)
	var ev events
	w := NewWatcher(10*time.Millisecond, ev.observer(t))
	const headroom = 64 * mib
	w.Add("img", m, Policy{Headroom: headroom})
	runWatcher(t, w)
	free := func() int64 {
		st, err := m.Stat()
		if err != nil {
			t.Fatal(err)
		}
		return st.FreeBytes
	}
	if !waitFor(2*time.Second, func() bool { return free() >= headroom }) {
		t.Fatalf("the window was not grown to its headroom: %d MiB free", free()>>20)
	}
	write := func(name string, n int) {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, n), 0o644); err != nil {
			t.Fatal(err)
		}
		unix.Sync()
	}
	time.Sleep(100 * time.Millisecond) // the first grow's checks are over
	before := ev.get().grown
	write("small", 64<<10)
	time.Sleep(300 * time.Millisecond) // 30 checks
	if g := ev.get().grown; g != before {
		t.Errorf("a 64 KiB write made the watcher grow the window by %d KiB (slack %d KiB)", (g-before)>>10, growSlack(headroom)>>10)
	}
	write("big", 4<<20)
	if !waitFor(2*time.Second, func() bool { return free() >= headroom }) {
		t.Errorf("after a 4 MiB write %d KiB free, want the %d MiB headroom back", free()>>10, headroom>>20)
	}
}

// TestWatcherChasesABurstOfDeletions: a trim gives back only what was
// freed before its journal commit. What a burst of deletions frees after
// it, less than TrimAfter, goes back at the next check (the chase), not a
// second later with the follow-up; a chase trim that finds nothing ends
// the chase, and a part of the burst that comes after it, still within a
// second, is trimmed once a chase step of it is deleted.
func TestWatcherChasesABurstOfDeletions(t *testing.T) {
	path, m, w, iw, ev := handCheckedImage(t, 16*mib)
	var ops int
	w.opDone = func(string) { ops++ }
	writeFiles(t, filepath.Join(m.Dir, "log"), 6, 4*mib)
	writeFiles(t, filepath.Join(m.Dir, "cache"), 4, mib)
	writeFiles(t, filepath.Join(m.Dir, "late"), 2, mib)
	roottest.Syncfs(t, m.Dir)
	start := time.Now()
	w.check("img", iw, start, false) // reads the floor
	if ops != 0 {
		t.Fatalf("%d trims before any deletion", ops)
	}

	// The burst's first part reaches TrimAfter: trimmed, and the chase on.
	if err := os.RemoveAll(filepath.Join(m.Dir, "log")); err != nil {
		t.Fatal(err)
	}
	w.check("img", iw, start.Add(20*time.Millisecond), false)
	w.wg.Wait()
	if ops != 1 || !iw.chasing.Load() || !iw.fast(start.Add(20*time.Millisecond)) {
		t.Fatalf("after 24 MiB deleted: %d trims, chasing %v", ops, iw.chasing.Load())
	}
	// Its second part, a quarter of TrimAfter, at the next check.
	before := fileFootprint(t, path)
	if err := os.RemoveAll(filepath.Join(m.Dir, "cache")); err != nil {
		t.Fatal(err)
	}
	w.check("img", iw, start.Add(40*time.Millisecond), false)
	w.wg.Wait()
	if got := fileFootprint(t, path); ops != 2 || got > before-3*mib {
		t.Fatalf("4 MiB deleted during the chase: %d trims, footprint %d KiB, was %d KiB", ops, got>>10, before>>10)
	}
	// Nothing more deleted: one more trim finds nothing and ends the chase.
	w.check("img", iw, start.Add(60*time.Millisecond), false)
	w.wg.Wait()
	if ops != 3 || iw.chasing.Load() {
		t.Fatalf("after the burst: %d trims, chasing %v", ops, iw.chasing.Load())
	}
	w.check("img", iw, start.Add(80*time.Millisecond), false)
	w.wg.Wait()
	if ops != 3 {
		t.Fatalf("%d trims once the chase ended, want 3", ops)
	}
	// A last part after a pause longer than the chase, within a second of
	// the last trim: a chase step of it is enough for a trim.
	before = fileFootprint(t, path)
	if err := os.RemoveAll(filepath.Join(m.Dir, "late")); err != nil {
		t.Fatal(err)
	}
	w.check("img", iw, start.Add(300*time.Millisecond), false)
	w.wg.Wait()
	if got := fileFootprint(t, path); ops != 4 || got > before-mib {
		t.Fatalf("2 MiB deleted 0.3 s into the burst: %d trims, footprint %d KiB, was %d KiB", ops, got>>10, before>>10)
	}
	if ev.get().failed != 0 {
		t.Fatalf("events %+v", ev.get())
	}
}

// TestWatcherChaseEndsWithTrimsOff: a policy that turns trims off in the
// middle of a chase ends it (the image leaves the fast lanes), and no
// trim runs.
func TestWatcherChaseEndsWithTrimsOff(t *testing.T) {
	_, m, w, iw, _ := handCheckedImage(t, 16*mib)
	var ops int
	w.opDone = func(string) { ops++ }
	writeFiles(t, filepath.Join(m.Dir, "log"), 6, 4*mib)
	roottest.Syncfs(t, m.Dir)
	start := time.Now()
	w.check("img", iw, start, false)
	if err := os.RemoveAll(filepath.Join(m.Dir, "log")); err != nil {
		t.Fatal(err)
	}
	w.check("img", iw, start.Add(20*time.Millisecond), false)
	w.wg.Wait()
	if ops != 1 || !iw.chasing.Load() {
		t.Fatalf("after 24 MiB deleted: %d trims, chasing %v", ops, iw.chasing.Load())
	}
	w.SetPolicy("img", Policy{Headroom: 64 * mib})
	at := start.Add(40 * time.Millisecond)
	w.check("img", iw, at, false)
	w.wg.Wait()
	if ops != 1 || iw.chasing.Load() || iw.fast(at) {
		t.Fatalf("trims turned off: %d trims, chasing %v, fast %v", ops, iw.chasing.Load(), iw.fast(at))
	}
}
