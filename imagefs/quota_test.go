package imagefs

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// writeUntil appends 4 MiB chunks to a new file name under dir until limit
// bytes are written or a write fails with ENOSPC; it returns the bytes
// written and whether ENOSPC stopped it.
func writeUntil(t *testing.T, dir, name string, limit int64) (int64, bool) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4*mib)
	rand.Read(buf)
	var n int64
	for n < limit {
		k, err := f.Write(buf)
		n += int64(k)
		if errors.Is(err, unix.ENOSPC) {
			return n, true
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); errors.Is(err, unix.ENOSPC) {
		return n, true
	} else if err != nil {
		t.Fatal(err)
	}
	return n, false
}

func TestQuotaChangesOnline(t *testing.T) {
	const ceiling = 2 * gib
	path, dir := newImageWith(t, CreateOptions{Quota: 256 * mib, Ceiling: ceiling, Window: 64 * mib, DirectIO: true})
	m := mountImage(t, path, dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := NewWatcher(10*time.Millisecond, Observer{Failed: func(_ string, err error) { t.Error(err) }})
	w.Add("q", m, Policy{Headroom: 32 * mib, Burst: 30 * time.Millisecond})
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(func() { cancel(); <-done }) }
	defer stop()
	// setQuota changes the quota as snug resize does (snapshotter.Resize):
	// a raise also frees the headroom at once, so a writer stopped at the
	// old quota does not wait for the watcher's next check (under load in
	// CI, its first write met ENOSPC before that check came).
	setQuota := func(q int64) (QuotaChange, error) {
		var ch QuotaChange
		err := w.Repack("q", func() (err error) {
			ch, err = m.SetQuota(ctx, q)
			if err != nil || ch.QuotaAfter <= ch.QuotaBefore {
				return err
			}
			_, err = m.EnsureFree(ctx, 32*mib)
			return err
		})
		return ch, err
	}
	stat := func() Stats {
		t.Helper()
		st, err := m.Stat()
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := stat(); st.QuotaBytes != 256*mib || st.CeilingBytes != ceiling {
		t.Fatalf("new image: quota %d ceiling %d, want %d and %d", st.QuotaBytes, st.CeilingBytes, 256*mib, ceiling)
	}

	// At 256 MiB the writer stops with ENOSPC, with the rest in the balloon.
	n, full := writeUntil(t, m.Dir, "a", ceiling)
	st := stat()
	t.Logf("quota 256 MiB: wrote %d MiB, used %d MiB, balloon %d MiB", n>>20, st.UsedBytes>>20, st.BalloonBytes>>20)
	if !full || st.UsedBytes > 256*mib || n < 200*mib {
		t.Fatalf("quota 256 MiB: wrote %d MiB (ENOSPC %t), used %d MiB", n>>20, full, st.UsedBytes>>20)
	}
	if st.UsedBytes+st.FreeBytes+st.BalloonBytes > ceiling || st.BalloonBytes < ceiling-256*mib-64*mib {
		t.Fatalf("balloon %d MiB: below its floor", st.BalloonBytes>>20)
	}

	// Raised to 1 GiB, the writer goes on past 256 MiB.
	if _, err := setQuota(gib); err != nil {
		t.Fatal(err)
	}
	if n, full := writeUntil(t, m.Dir, "b", 400*mib); full {
		t.Fatalf("quota raised to 1 GiB: ENOSPC after %d MiB more", n>>20)
	}
	if err := os.Remove(filepath.Join(m.Dir, "a")); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	stored := stat().UsedBytes

	// Lowered below what it stores: refused, nothing changes.
	if _, err := setQuota(300 * mib); !errors.Is(err, ErrQuotaBelowUsage) {
		t.Fatalf("quota 300 MiB with %d MiB stored: %v, want ErrQuotaBelowUsage", stored>>20, err)
	} else {
		t.Logf("refused: %v", err)
	}
	if st := stat(); st.QuotaBytes != gib {
		t.Fatalf("refused change left quota %d, want %d", st.QuotaBytes, gib)
	}
	if _, err := setQuota(ceiling + gib); !errors.Is(err, ErrQuotaAboveCeiling) {
		t.Fatalf("quota above the ceiling: %v, want ErrQuotaAboveCeiling", err)
	}

	// Lowered to 512 MiB while it stores ~400 MiB: ENOSPC at ~512 MiB.
	ch, err := setQuota(512 * mib)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lowered to 512 MiB with %d MiB stored: balloon %d -> %d MiB", stored>>20, ch.BalloonBefore>>20, ch.BalloonAfter>>20)
	n, full = writeUntil(t, m.Dir, "c", ceiling)
	st = stat()
	t.Logf("quota 512 MiB: wrote %d MiB more, used %d MiB", n>>20, st.UsedBytes>>20)
	if !full || st.UsedBytes > 512*mib || st.UsedBytes < 480*mib {
		t.Fatalf("quota 512 MiB: used %d MiB at ENOSPC %t", st.UsedBytes>>20, full)
	}
	stop()
	// The quota is in the image: clean, and the same after a remount.
	if err := m.Unmount(context.Background()); err != nil {
		t.Fatal(err)
	}
	requireClean(t, path)
	m = mountImage(t, path, dir)
	if st := stat(); st.QuotaBytes != 512*mib || st.UsedBytes+st.FreeBytes > 512*mib {
		t.Fatalf("after a remount: quota %d MiB, balloon %d MiB", st.QuotaBytes>>20, st.BalloonBytes>>20)
	}
}

func TestReclaimKeepsTheQuotaFloor(t *testing.T) {
	const ceiling = gib
	path, dir := newImageWith(t, CreateOptions{Quota: 128 * mib, Ceiling: ceiling, Window: 32 * mib, DirectIO: true})
	m := mountImage(t, path, dir)
	ctx := context.Background()
	if _, err := m.EnsureFree(ctx, 64*mib); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, filepath.Join(m.Dir, "d"), 10, 4*mib)
	// A reclaim re-inflates the balloon over all free space, then releases
	// its headroom: never below the floor, whatever the headroom asks.
	if _, err := m.Reclaim(ctx, ReclaimOptions{Headroom: 512 * mib}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Grow(ctx, ceiling); err != nil {
		t.Fatal(err)
	}
	if _, err := m.EnsureFree(ctx, ceiling); err != nil {
		t.Fatal(err)
	}
	st, err := m.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.UsedBytes+st.FreeBytes > 128*mib {
		t.Fatalf("used %d + free %d MiB > quota 128 MiB", st.UsedBytes>>20, st.FreeBytes>>20)
	}
}

// FuzzParseQuota: a quota record read from an image (which a crafted image
// can hold anything in) is a quota of at least MinQuota or an error.
func FuzzParseQuota(f *testing.F) {
	for _, s := range []string{"268435456", "0", "-1", "", "1e9", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if q, err := parseQuota(s); err == nil && q < MinQuota {
			t.Fatalf("%q: quota %d", s, q)
		}
	})
}

// TestQuotaLoweredWhileWriting: the quota is lowered while a writer
// streams into the image; the writer then stops with ENOSPC at the new
// quota, and the filesystem is clean.
func TestQuotaLoweredWhileWriting(t *testing.T) {
	const ceiling = 2 * gib
	path, dir := newImageWith(t, CreateOptions{Quota: gib, Ceiling: ceiling, Window: 64 * mib, DirectIO: true})
	m := mountImage(t, path, dir)
	ctx, cancel := context.WithCancel(context.Background())
	w := NewWatcher(10*time.Millisecond, Observer{Failed: func(_ string, err error) { t.Error(err) }})
	w.Add("q", m, Policy{Headroom: 32 * mib, Burst: 30 * time.Millisecond})
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	var written atomic.Int64
	result := make(chan bool)
	go func() {
		f, err := os.Create(filepath.Join(m.Dir, "stream"))
		if err != nil {
			t.Error(err)
			result <- false
			return
		}
		defer f.Close()
		buf := make([]byte, mib)
		for written.Load() < 900*mib {
			if _, err := f.Write(buf); err != nil {
				result <- errors.Is(err, unix.ENOSPC)
				return
			}
			written.Add(mib)
			if written.Load()%(16*mib) == 0 {
				f.Sync()
			}
		}
		result <- false
	}()
	for written.Load() < 200*mib {
		time.Sleep(5 * time.Millisecond)
	}
	err := w.Repack("q", func() error { _, err := m.SetQuota(ctx, 512*mib); return err })
	at := written.Load()
	if err != nil {
		t.Fatalf("lowered to 512 MiB with %d MiB written: %v", at>>20, err)
	}
	full := <-result
	cancel()
	<-done
	st, err := m.Stat()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lowered at %d MiB written; the writer stopped at %d MiB (ENOSPC %t), used %d MiB", at>>20, written.Load()>>20, full, st.UsedBytes>>20)
	if !full || st.UsedBytes > 512*mib || st.UsedBytes < 480*mib {
		t.Fatalf("after lowering to 512 MiB: ENOSPC %t, used %d MiB", full, st.UsedBytes>>20)
	}
	if err := m.Unmount(context.Background()); err != nil {
		t.Fatal(err)
	}
	requireClean(t, path)
}
