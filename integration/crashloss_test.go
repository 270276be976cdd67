package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// TestUnsyncedWritesAfterCrash measures what a host crash does to data
// written without fsync, for each way snug can mount an image: ext4's
// default data=ordered, the policy's async_commit (data=writeback,
// journal_async_commit), and async_commit with discard (a freed block is
// punched out of the image file once the commit that freed it is written,
// so a block reused before its new data reached it reads as zeros, but for
// the ones ext4 hands out again before its discard work has run). The image first holds a file of stale bytes
// ('S'), deleted, so its free blocks are not zeros. Then one writer makes
// files of fresh bytes (each its own name, repeated) without fsync, starting their writeback
// (sync_file_range), while another appends and fsyncs a log, so the
// journal commits the new files' blocks all the time. Crash images are
// reflink clones of the image file taken meanwhile (direct I/O: the file
// holds what the loop device completed), each recovered by a mount. A new
// file is then whole, shorter, empty or with zeros where its data did not
// land, or it shows stale bytes: blocks committed to it before its data
// reached them, holding a deleted file's.
//
// data=ordered must never show stale bytes (ext4 writes a file's new data
// before the commit that gives it the blocks). For async_commit, with and
// without discard, the count is what the docs report; the kernel documents that writeback mode "can
// allow old data to appear in files after a crash".
func TestUnsyncedWritesAfterCrash(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "mkfs.xfs", "e2fsck")
	for _, mode := range []struct {
		name string
		o    imagefs.MountOptions
	}{
		{"ordered", imagefs.MountOptions{DirectIO: true}},
		{"async-commit", imagefs.MountOptions{DirectIO: true, AsyncCommit: true}},
		{"async-commit-discard", imagefs.MountOptions{DirectIO: true, AsyncCommit: true, Discard: true}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			res := unsyncedCrash(t, mode.o, 24)
			t.Logf("%s: %d crash images; new files seen %d, whole %d, short or empty %d, with stale bytes %d (in %d images)",
				mode.name, res.images, res.files, res.whole, res.short, res.stale, res.staleImages)
			if !mode.o.AsyncCommit && res.stale > 0 {
				t.Errorf("data=ordered showed stale bytes in %d files after a crash", res.stale)
			}
			if res.files == 0 {
				t.Error("no new file reached any crash image: the measurement saw nothing")
			}
		})
	}
}

type crashLoss struct {
	images, files, whole, short, stale, staleImages int
}

func unsyncedCrash(t *testing.T, o imagefs.MountOptions, crashes int) crashLoss {
	ctx := context.Background()
	dir := roottest.TempDir(t)
	host := mountXFS(t, dir, "host")
	image := filepath.Join(host, "img")
	if err := imagefs.Create(ctx, image, imagefs.CreateOptions{Quota: 256 << 20, Window: 256 << 20, DirectIO: true}); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := imagefs.Mount(ctx, image, mnt, o)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmount(ctx)

	const fileSize = 256 << 10
	stale := bytes.Repeat([]byte{'S'}, 64<<20)
	staleFile := filepath.Join(mnt, "stale")
	if err := os.WriteFile(staleFile, stale, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(staleFile); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	if err := os.MkdirAll(filepath.Join(mnt, "new"), 0o755); err != nil {
		t.Fatal(err)
	}

	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Add(2)
	go func() { // files written without fsync, their writeback started
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			f, err := os.Create(filepath.Join(mnt, "new", fmt.Sprintf("f%05d", i)))
			if err != nil {
				errs <- err
				return
			}
			_, err = f.Write(freshData(i, fileSize))
			if err == nil {
				err = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
			}
			f.Close()
			if err != nil {
				errs <- err
				return
			}
			if i >= 100 { // keep within the image: the newest 100 stay
				if err := os.Remove(filepath.Join(mnt, "new", fmt.Sprintf("f%05d", i-100))); err != nil {
					errs <- err
					return
				}
			}
		}
	}()
	go func() { // a log fsync'd all the time: journal commits
		defer wg.Done()
		f, err := os.Create(filepath.Join(mnt, "log"))
		if err != nil {
			errs <- err
			return
		}
		defer f.Close()
		for !stop.Load() {
			if _, err := f.Write([]byte("record\n")); err != nil {
				errs <- err
				return
			}
			if err := f.Sync(); err != nil {
				errs <- err
				return
			}
		}
	}()
	time.Sleep(500 * time.Millisecond)
	var clones []string
	for i := range crashes {
		clone := filepath.Join(host, fmt.Sprintf("crash-%02d.img", i))
		reflinkCopy(t, image, clone)
		clones = append(clones, clone)
		time.Sleep(time.Duration(30+i%5*17) * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("writer: %v", err)
	}

	var res crashLoss
	for _, clone := range clones {
		files, whole, short, staleFiles := inspectCrash(t, clone, fileSize)
		res.images++
		res.files += files
		res.whole += whole
		res.short += short
		res.stale += staleFiles
		if staleFiles > 0 {
			res.staleImages++
		}
		os.Remove(clone)
	}
	return res
}

// inspectCrash recovers a crash image (a mount replays its journal), checks
// it with e2fsck -fn, and sorts its new files.
func inspectCrash(t *testing.T, img string, size int) (files, whole, short, stale int) {
	t.Helper()
	mnt := recoveredMount(t, img, func(img string) { mountRecover(t, img) })
	defer exec.Command("umount", mnt).Run()
	entries, err := os.ReadDir(filepath.Join(mnt, "new"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(mnt, "new", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var i int
		if _, err := fmt.Sscanf(e.Name(), "f%05d", &i); err != nil {
			t.Fatalf("unexpected file %s", e.Name())
		}
		files++
		want := freshData(i, size)
		switch {
		case bytes.Equal(b, want):
			whole++
		case holdsOnly(b, want):
			short++ // shorter, empty, or zeros where its data did not land
		default:
			stale++ // bytes it was never given: its blocks' old contents
		}
	}
	return files, whole, short, stale
}

// freshData is the content of new file i: its own name over and over, so
// blocks of another file (deleted, reused) show as stale too.
func freshData(i, size int) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("f%05d\n", i)), size/7+1)[:size]
}

// holdsOnly reports whether every 4 KiB block of b is the same block of
// want or zeros.
func holdsOnly(b, want []byte) bool {
	if len(b) > len(want) {
		return false
	}
	zero := make([]byte, 4096)
	for off := 0; off < len(b); off += 4096 {
		end := min(off+4096, len(b))
		if !bytes.Equal(b[off:end], want[off:end]) && !bytes.Equal(b[off:end], zero[:end-off]) {
			return false
		}
	}
	return true
}
