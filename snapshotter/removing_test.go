package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"
)

func TestRemovalsPending(t *testing.T) {
	r := newRemovals()
	if busy, err := r.wait(context.Background()); busy || err != nil {
		t.Fatalf("wait with nothing pending = %v, %v; want false, nil", busy, err)
	}
	for _, tc := range []struct {
		dir                string
		queued, wantClosed bool
	}{
		{"/s/1", true, false},
		{"/s/2", true, false},
		{"/s/1", false, false}, // already pending: one worker per directory
	} {
		queued, closed := r.add(tc.dir)
		if queued != tc.queued || closed != tc.wantClosed {
			t.Errorf("add(%s) = %v, %v; want %v, %v", tc.dir, queued, closed, tc.queued, tc.wantClosed)
		}
	}
	if !r.has("/s/1") || !r.has("/s/2") || r.has("/s/3") {
		t.Errorf("has: /s/1 %v, /s/2 %v, /s/3 %v; want true, true, false", r.has("/s/1"), r.has("/s/2"), r.has("/s/3"))
	}

	waited := make(chan bool)
	go func() {
		busy, err := r.wait(context.Background())
		if err != nil {
			t.Error(err)
		}
		waited <- busy
	}()
	r.done("/s/1")
	// One added while the waiter waits is waited for too.
	if queued, _ := r.add("/s/3"); !queued {
		t.Fatal("add(/s/3) not queued")
	}
	r.done("/s/2")
	select {
	case <-waited:
		t.Fatal("wait returned with /s/3 pending")
	case <-time.After(50 * time.Millisecond):
	}
	r.done("/s/3")
	select {
	case busy := <-waited:
		if !busy {
			t.Error("wait reported nothing pending")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("wait did not return once nothing was pending")
	}
	if r.has("/s/1") {
		t.Error("/s/1 still pending after done")
	}
}

func TestRemovalsWaitEndsWithContext(t *testing.T) {
	r := newRemovals()
	r.add("/s/1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if busy, err := r.wait(ctx); !busy || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("wait = %v, %v; want true, deadline exceeded", busy, err)
	}
	r.done("/s/1")
}

func TestRemovalsClose(t *testing.T) {
	r := newRemovals()
	r.add("/s/1")
	closed := make(chan struct{})
	go func() { r.close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("close returned with a worker running")
	case <-time.After(50 * time.Millisecond):
	}
	r.done("/s/1")
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("close did not return once the worker ended")
	}
	if queued, isClosed := r.add("/s/2"); queued || !isClosed {
		t.Errorf("add after close = %v, %v; want false, true (delete at once)", queued, isClosed)
	}
}

// TestRemoveDeletesInBackground: Remove returns once the removal is
// recorded, while the image is still in use (here by a bind mount of its
// upper dir, as a container's root would be); Cleanup waits for the
// deletion in flight, then deletes what it left, and nothing stays
// attached.
func TestRemoveDeletesInBackground(t *testing.T) {
	ctx := context.Background()
	sn, root := newTestSnapshotter(t)
	mounts, err := sn.Prepare(ctx, "busy", "")
	if err != nil {
		t.Fatal(err)
	}
	dirs, err := filepath.Glob(filepath.Join(root, "snapshots", "[0-9]*"))
	if err != nil || len(dirs) != 1 {
		t.Fatalf("snapshot directories %v, %v; want one", dirs, err)
	}
	rootfs := t.TempDir()
	if err := mount.All(mounts, rootfs); err != nil {
		t.Fatal(err)
	}
	unmounted := false
	t.Cleanup(func() {
		if !unmounted {
			mount.UnmountAll(rootfs, 0)
		}
	})
	if err := sn.Remove(ctx, "busy"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Stat(ctx, "busy"); err == nil {
		t.Error("Stat found the removed snapshot")
	}
	if !sn.removing.has(dirs[0]) {
		t.Errorf("Remove returned with %s not pending deletion", dirs[0])
	}
	if err := mount.UnmountAll(rootfs, 0); err != nil {
		t.Fatal(err)
	}
	unmounted = true
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dirs[0]); !os.IsNotExist(err) {
		t.Errorf("after Cleanup %s is still there: %v", dirs[0], err)
	}
	backing, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, b := range backing {
		if f, err := os.ReadFile(b); err == nil && strings.HasPrefix(string(f), dirs[0]+"/") {
			t.Errorf("after Cleanup %s backs %s", strings.TrimSpace(string(f)), b)
		}
	}
}

// TestRemoveDiscardsTheImage: the deletion of a removed container's rw
// image drops what the container left in the page cache instead of
// writing it to the file (Mounted.Discard): 8 MiB written and not synced
// never reach the image file, which a hard link keeps for the test.
func TestRemoveDiscardsTheImage(t *testing.T) {
	ctx := context.Background()
	sn, root := newTestSnapshotter(t)
	writeVia(t, sn, "c", "", "unsynced", strings.Repeat("x", 8<<20))
	dirs, err := filepath.Glob(filepath.Join(root, "snapshots", "[0-9]*"))
	if err != nil || len(dirs) != 1 {
		t.Fatalf("snapshot directories %v, %v; want one", dirs, err)
	}
	kept := filepath.Join(root, "kept.img")
	if err := os.Link(filepath.Join(dirs[0], rwImage), kept); err != nil {
		t.Fatal(err)
	}
	allocated := func() int64 {
		var st unix.Stat_t
		if err := unix.Stat(kept, &st); err != nil {
			t.Fatal(err)
		}
		return st.Blocks * 512
	}
	before := allocated()
	if err := sn.Remove(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dirs[0]); !os.IsNotExist(err) {
		t.Fatalf("after Cleanup %s is still there: %v", dirs[0], err)
	}
	if grew := allocated() - before; grew >= 1<<20 {
		t.Errorf("the removed image's file grew by %d KiB as it was deleted: its unsynced data was written back", grew>>10)
	}
}
