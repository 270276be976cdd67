package imagefs

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/roottest"
)

// TestAttachKeepsFlushes: a loop device whose cache mode was left at
// "write through" (the kernel keeps it across attachments) is made
// write-back when an image is attached to it read-write, so a flush of the
// image reaches the loop driver, and with it the host's disk.
func TestAttachKeepsFlushes(t *testing.T) {
	ctx := context.Background()
	path := rawFile(t, "flush.img")
	loop := attachToWriteThrough(t, ctx, path)
	defer loop.Close()
	name := filepath.Base(loop.Device)
	if mode, err := readWriteCache("/sys/block/" + name + "/queue/write_cache"); err != nil || mode != "write back" {
		t.Errorf("%s after Attach: cache mode %q (%v), want write back", loop.Device, mode, err)
	}

	// A write and an fsync of the device: the block layer sends the loop
	// driver a flush only if its cache is write-back.
	before, err := roottest.Flushes(loop.Device)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := os.OpenFile(loop.Device, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if _, err := dev.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	after, err := roottest.Flushes(loop.Device)
	if err != nil {
		t.Fatal(err)
	}
	if after <= before {
		t.Errorf("an fsync of %s made no flush (%d before, %d after)", loop.Device, before, after)
	}

	// A read-only attachment has nothing to flush and is left as it is.
	ro, err := Attach(ctx, path, AttachOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	ro.Close()
}

// attachToWriteThrough sets the next free loop device's cache mode to
// write through, as a leftover of an earlier user, and attaches path
// read-write; it tries again if another process took that device first.
// The override is cleared when the test ends, whatever Attach did.
func attachToWriteThrough(t *testing.T, ctx context.Context, path string) *Loop {
	t.Helper()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	for attempt := 0; attempt < 10; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			t.Fatal(err)
		}
		name := "loop" + strconv.Itoa(n)
		mode := "/sys/block/" + name + "/queue/write_cache"
		if err := os.WriteFile(mode, []byte("write through"), 0); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.WriteFile(mode, []byte("write back"), 0) })
		loop, err := Attach(ctx, path, AttachOptions{DirectIO: true})
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimPrefix(loop.Device, "/dev/") == name {
			return loop
		}
		loop.Close()
	}
	t.Fatal("another process took every free loop device first")
	return nil
}

// TestWatcherKeepsFlushes: a mounted image's loop device set to write
// through while it is in use (by an operator, a tuning tool) is set back to
// write back by the watcher and reported, so a container's fsyncs reach the
// disk again within a check of the cache mode.
func TestWatcherKeepsFlushes(t *testing.T) {
	path, dir := newImage(t, gib, 64*mib)
	m := mountImage(t, path, dir)
	mode := writeCachePath(m.Device)
	t.Cleanup(func() { os.WriteFile(mode, []byte("write back"), 0) })

	var mu sync.Mutex
	var reported []error
	w := NewWatcher(20*time.Millisecond, Observer{
		Failed: func(_ string, err error) { t.Logf("watcher: %v", err) },
		FlushesDropped: func(key, device string, err error) {
			if key != "img" || device != m.Device {
				t.Errorf("FlushesDropped(%q, %q), want img on %s", key, device, m.Device)
			}
			mu.Lock()
			reported = append(reported, err)
			mu.Unlock()
		},
	})
	w.cacheEvery = 100 * time.Millisecond
	w.Add("img", m, Policy{Headroom: 16 * mib})
	runWatcher(t, w)

	if err := os.WriteFile(mode, []byte("write through"), 0); err != nil {
		t.Fatal(err)
	}
	// The report comes after the device is set back: wait for both.
	reports := func() []error {
		mu.Lock()
		defer mu.Unlock()
		return append([]error(nil), reported...)
	}
	if !waitFor(5*time.Second, func() bool {
		got, err := readWriteCache(mode)
		return err == nil && got == "write back" && len(reports()) > 0
	}) {
		got, _ := readWriteCache(mode)
		t.Fatalf("%s %q under the watcher, reports %v", m.Device, got, reports())
	}
	if got := reports(); len(got) != 1 || got[0] != nil {
		t.Errorf("reports %v, want one, with no error", got)
	}

	// An fsync in the image reaches the loop driver as a flush again.
	before, err := roottest.Flushes(m.Device)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.Dir, "f"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(m.Dir, "f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if after, err := roottest.Flushes(m.Device); err != nil || after <= before {
		t.Errorf("an fsync in the image made no flush of %s (%d before, %d after, %v)", m.Device, before, after, err)
	}
}
