package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/images"
	"github.com/snugfs/snug/internal/roottest"
)

// mountRootfs mounts a snapshot's mounts where a runtime would.
func mountRootfs(t *testing.T, mounts []mount.Mount) string {
	t.Helper()
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	os.Mkdir(rootfs, 0o755)
	if err := mount.All(mounts, rootfs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mount.UnmountAll(rootfs, 0) })
	return rootfs
}

func statusOf(t *testing.T, sn *Snapshotter, key string) images.ImageStatus {
	t.Helper()
	for _, st := range mustStatus(t, sn) {
		if st.Snapshot == key {
			return st
		}
	}
	t.Fatalf("no status for %s", key)
	return images.ImageStatus{}
}

// TestContainerLifecycle follows a container through its hooks: prestart
// finds its image from the rootfs mount and applies its annotation's class;
// poststop schedules a reclaim that gives the deleted data back and packs
// the window; status shows both.
func TestContainerLifecycle(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	ctx := context.Background()
	root := roottest.TempDir(t)
	cfg := testConfig(root)
	cfg.Reclaim.TrimAfter = 0 // leave the deleted data for the reclaim
	roomy := cfg.Base()
	roomy.Window.Headroom = 96 * config.MiB
	cfg.Classes = map[string]config.Class{"roomy": roomy}
	sn := startSnapshotter(t, cfg)
	writeVia(t, sn, "base-active", "", "base.txt", "base")
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	mounts, err := sn.Prepare(ctx, "c1", "base")
	if err != nil {
		t.Fatal(err)
	}
	rootfs := mountRootfs(t, mounts)

	img, err := sn.images.ContainerStarting(ctx, images.Container{ID: "ctr-1", RootFS: rootfs, Annotations: map[string]string{config.AnnotationClass: "roomy"}})
	if err != nil {
		t.Fatal(err)
	}
	if img.ID != idOf(t, sn, "c1") || img.Class != "roomy" || img.FreeBytes < 95*1<<20 {
		t.Fatalf("prestart: %+v, want snapshot %s, class roomy, 96 MiB free", img, idOf(t, sn, "c1"))
	}
	// The container writes 120 MiB and deletes 100 MiB of it.
	for i := range 12 {
		buf := make([]byte, 10<<20)
		for j := range buf {
			buf[j] = byte(i + j)
		}
		if err := os.WriteFile(filepath.Join(rootfs, fmt.Sprint("f", i)), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	roottest.Syncfs(t, rootfs)
	for i := range 10 {
		os.Remove(filepath.Join(rootfs, fmt.Sprint("f", i)))
	}
	roottest.Syncfs(t, rootfs)
	before := statusOf(t, sn, "c1")
	if before.State != "running" || before.Container != "ctr-1" || before.LastGrow == nil {
		t.Fatalf("status while running: %+v", before.Activity)
	}

	start := time.Now()
	if _, err := sn.images.ContainerStopped(ctx, images.Container{ID: "ctr-1", RootFS: rootfs}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("poststop took %v: the reclaim must not run on the stop's path", d)
	}
	var after images.ImageStatus
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if after = statusOf(t, sn, "c1"); after.LastReclaim != nil {
			break
		}
	}
	if after.LastReclaim == nil || after.State != "stopped" || after.Reclaims != 1 {
		t.Fatalf("no reclaim after the stop: %+v", after.Activity)
	}
	limit := after.UsedBytes*103/100 + 8<<20
	t.Logf("footprint %d -> %d MiB, used %d MiB, window %d -> %d MiB", before.FootprintBytes>>20, after.FootprintBytes>>20, after.UsedBytes>>20, before.WindowBytes>>20, after.WindowBytes>>20)
	if after.FootprintBytes > limit {
		t.Errorf("footprint after the stop %d, want at most 1.03 x used + 8 MiB = %d", after.FootprintBytes, limit)
	}
	if after.WindowBytes > after.UsedBytes+roomy.Window.Headroom.Bytes()+32<<20 {
		t.Errorf("window %d MiB after reclaim, want about used + 96 MiB headroom", after.WindowBytes>>20)
	}
	// The exit event after the hook is the same stop: no second reclaim.
	if _, err := sn.images.ContainerStopped(ctx, images.Container{SnapshotID: img.ID}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(images.StopDelay + 300*time.Millisecond)
	if n := statusOf(t, sn, "c1").Reclaims; n != 1 {
		t.Errorf("%d reclaims after the hook and the exit event of one stop, want 1", n)
	}
	if err := sn.Remove(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
}

// TestRemoveCancelsAScheduledReclaim: `ctr run --rm` removes the snapshot
// right after the stop; the reclaim scheduled by the stop never runs and
// does not hold the removal up.
func TestRemoveCancelsAScheduledReclaim(t *testing.T) {
	ctx := context.Background()
	sn := startSnapshotter(t, testConfig(roottest.TempDir(t)))
	mounts, err := sn.Prepare(ctx, "c1", "")
	if err != nil {
		t.Fatal(err)
	}
	id := idOf(t, sn, "c1")
	rootfs := mountRootfs(t, mounts)
	if _, err := sn.images.ContainerStarting(ctx, images.Container{ID: "x", RootFS: rootfs}); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.images.ContainerStopped(ctx, images.Container{ID: "x", RootFS: rootfs}); err != nil {
		t.Fatal(err)
	}
	mount.UnmountAll(rootfs, 0)
	if err := sn.Remove(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(images.StopDelay + 200*time.Millisecond)
	if got := sn.images.Totals().Reclaims; got != 0 {
		t.Errorf("%d reclaims of a removed snapshot", got)
	}
	if _, err := os.Stat(sn.snapshotDir(id)); !os.IsNotExist(err) {
		t.Errorf("snapshot directory still there: %v", err)
	}
}

// TestReclaimOnStopWaitsForALull: a stopped container's reclaim waits
// while snapshots keep being prepared or removed (a burst of ctr run --rm,
// whose removals then come first), and runs once they pause.
func TestReclaimOnStopWaitsForALull(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(roottest.TempDir(t))
	cfg.Reclaim.TrimAfter = 0 // what the container deletes waits for the reclaim
	sn := startSnapshotter(t, cfg)
	mounts, err := sn.Prepare(ctx, "c1", "")
	if err != nil {
		t.Fatal(err)
	}
	rootfs := mountRootfs(t, mounts)
	defer mount.UnmountAll(rootfs, 0)
	if _, err := sn.images.ContainerStarting(ctx, images.Container{ID: "x", RootFS: rootfs}); err != nil {
		t.Fatal(err)
	}
	writeAndDelete(t, rootfs, 32<<20) // something for the reclaim to give back
	if _, err := sn.images.ContainerStopped(ctx, images.Container{ID: "x", RootFS: rootfs}); err != nil {
		t.Fatal(err)
	}
	// Other containers start and go, one every 50 ms, for twice the stop
	// delay and more: no reclaim meanwhile.
	busy := time.Now().Add(2*images.StopDelay + 500*time.Millisecond)
	for time.Now().Before(busy) {
		sn.traffic.Mark()
		time.Sleep(50 * time.Millisecond)
	}
	if n := sn.images.Totals().Reclaims; n != 0 {
		t.Fatalf("%d reclaims while snapshots kept being prepared and removed, want 0", n)
	}
	sn.traffic.Mark() // the last one
	lull := time.Now()
	for end := lull.Add(5 * time.Second); sn.images.Totals().Reclaims == 0 && time.Now().Before(end); {
		time.Sleep(20 * time.Millisecond)
	}
	if n := sn.images.Totals().Reclaims; n != 1 {
		t.Fatalf("%d reclaims after the lull, want 1", n)
	}
	if took := time.Since(lull); took < images.ReclaimLull {
		t.Errorf("reclaimed %v into the lull, want at least %v", took, images.ReclaimLull)
	}
}

// TestStopSkipsAPackedImage: a container that stops with its image packed
// already (it wrote next to nothing, or the watcher trimmed what it
// deleted) costs no reclaim; one whose deletions the host still holds
// does.
func TestStopSkipsAPackedImage(t *testing.T) {
	ctx := context.Background()
	sn := startSnapshotter(t, testConfig(roottest.TempDir(t)))
	for _, tc := range []struct {
		name     string
		deleted  int64 // bytes written and deleted just before the stop
		trimmed  bool  // and trimmed (as the watcher does while it runs)
		reclaims int64
	}{
		{"wrote nothing", 0, false, 0},
		{"deleted 64 MiB", 64 << 20, false, 1},
		// Footprint tight, but a window grown far beyond the headroom:
		// repacked, so that a restart starts packed.
		{"deleted 128 MiB, trimmed", 128 << 20, true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mounts, err := sn.Prepare(ctx, tc.name, "")
			if err != nil {
				t.Fatal(err)
			}
			rootfs := mountRootfs(t, mounts)
			defer mount.UnmountAll(rootfs, 0)
			c := images.Container{ID: tc.name, RootFS: rootfs}
			if _, err := sn.images.ContainerStarting(ctx, c); err != nil {
				t.Fatal(err)
			}
			writeAndDelete(t, rootfs, tc.deleted)
			id := idOf(t, sn, tc.name)
			if tc.trimmed {
				roottest.Syncfs(t, rootfs)
				m, _, _ := sn.MountedImage(id)
				if _, err := m.Trim(ctx); err != nil {
					t.Fatal(err)
				}
				if tight, st, err := m.Packed(1 << 62); err != nil || !tight {
					t.Fatalf("footprint %d MiB for %d MiB used after the trim (%v): not the window's case", st.FootprintBytes>>20, st.UsedBytes>>20, err)
				}
			}
			before := sn.images.Totals()
			if _, err := sn.images.ContainerStopped(ctx, c); err != nil {
				t.Fatal(err)
			}
			// The reclaim scheduled at the stop runs after images.StopDelay
			// and a lull: it either repacks or is skipped.
			decided := func() bool {
				now := sn.images.Totals()
				return now.Reclaims+now.ReclaimsSkipped > before.Reclaims+before.ReclaimsSkipped
			}
			for end := time.Now().Add(10 * time.Second); !decided() && time.Now().Before(end); {
				time.Sleep(20 * time.Millisecond)
			}
			if got := sn.images.Totals().Reclaims - before.Reclaims; got != tc.reclaims {
				t.Errorf("%d reclaims, want %d", got, tc.reclaims)
			}
			if got := statusOf(t, sn, tc.name).ReclaimsSkipped; got != 1-tc.reclaims {
				t.Errorf("%d reclaims skipped in the image's status, want %d", got, 1-tc.reclaims)
			}
		})
	}
}

// startSnapshotter starts a snapshotter on cfg (the root tests' tools
// required) and closes it when the test ends.
func startSnapshotter(t *testing.T, cfg config.Config) *Snapshotter {
	t.Helper()
	sn := openSnapshotter(t, cfg)
	t.Cleanup(func() { sn.Close() })
	return sn
}

// openSnapshotter starts a snapshotter on cfg (the root tests' tools
// required), as a daemon starting or restarting does; the test closes it.
func openSnapshotter(t *testing.T, cfg config.Config) *Snapshotter {
	t.Helper()
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	sn, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

// writeAndDelete writes n bytes into a file in dir, a MiB at a time and
// each synced (so the watcher grows the window ahead of them), and deletes
// the file.
func writeAndDelete(t *testing.T, dir string, n int64) {
	t.Helper()
	if n == 0 {
		return
	}
	path := filepath.Join(dir, "gone")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for written := int64(0); written < n; written += int64(len(buf)) {
		_, err := f.Write(buf)
		for tries := 0; errors.Is(err, syscall.ENOSPC) && tries < 50; tries++ {
			time.Sleep(20 * time.Millisecond) // the grow lands at the next check
			_, err = f.Write(buf)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

// TestClassLabel: the snapshot label picks a class for the image from its
// creation; a class the policy does not define is refused.
func TestClassLabel(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	ctx := context.Background()
	root := roottest.TempDir(t)
	cfg := testConfig(root)
	db := cfg.Base()
	db.Window.Headroom = 64 * config.MiB
	cfg.Classes = map[string]config.Class{"db": db}
	sn := startSnapshotter(t, cfg)
	if _, err := sn.Prepare(ctx, "c1", "", snapshots.WithLabels(map[string]string{config.LabelClass: "db"})); err != nil {
		t.Fatal(err)
	}
	st := statusOf(t, sn, "c1")
	if st.Class != "db" || st.FreeBytes < 63<<20 {
		t.Fatalf("labelled snapshot: class %q, free %d MiB; want db, 64 MiB", st.Class, st.FreeBytes>>20)
	}
	_, err := sn.Prepare(ctx, "c2", "", snapshots.WithLabels(map[string]string{config.LabelClass: "nope"}))
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("unknown class: %v, want an invalid argument", err)
	}
	// The class survives a restart.
	sn.Close()
	sn2 := startSnapshotter(t, cfg)
	if st := statusOf(t, sn2, "c1"); st.Class != "db" {
		t.Fatalf("class after restart %q, want db", st.Class)
	}
}

func TestSnapshotsOfMounts(t *testing.T) {
	s := &Snapshotter{root: "/var/lib/snug"}
	layer := func(id string) string { return "/var/lib/snug/snapshots/" + id + "/mnt/fs" }
	for _, tc := range []struct {
		name   string
		mounts []mount.Mount
		rw     string
		layers []string
	}{
		{"overlay", []mount.Mount{{Type: "overlay", Options: []string{
			"workdir=/var/lib/snug/snapshots/9/mnt/work", "upperdir=/var/lib/snug/snapshots/9/mnt/upper",
			"lowerdir=" + layer("4") + ":" + layer("2"), "index=off"}}}, "9", []string{"4", "2"}},
		{"bind of an rw image", []mount.Mount{{Type: "bind", Source: "/var/lib/snug/snapshots/3/mnt/upper", Options: []string{"rw", "rbind"}}}, "3", nil},
		{"view of one layer", []mount.Mount{{Type: "bind", Source: layer("5"), Options: []string{"ro", "rbind"}}}, "", []string{"5"}},
		{"not snug", []mount.Mount{{Type: "overlay", Options: []string{"upperdir=/var/lib/containerd/x/9/mnt/upper", "lowerdir=/elsewhere/snapshots/4/mnt/fs"}}}, "", nil},
		{"escaping path", []mount.Mount{{Type: "bind", Source: "/var/lib/snug/snapshots/../other/7/mnt/upper"}}, "", nil},
		{"not an id", []mount.Mount{{Type: "overlay", Options: []string{"upperdir=/var/lib/snug/snapshots/new-1/mnt/upper", "lowerdir=/var/lib/snug/snapshots/x/mnt/fs"}}}, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.SnapshotOfMounts(tc.mounts); got != tc.rw {
				t.Errorf("SnapshotOfMounts = %q, want %q", got, tc.rw)
			}
			if got := s.LayersOfMounts(tc.mounts); !slices.Equal(got, tc.layers) {
				t.Errorf("LayersOfMounts = %q, want %q", got, tc.layers)
			}
		})
	}
}

// TestContainerdKey: the snapshot containerd named "<ns>/<n>/<key>" is
// found by its namespace and key; one named otherwise is not.
func TestContainerdKey(t *testing.T) {
	sn, _ := newTestSnapshotter(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, ns, key string
		ok            bool
	}{
		{"default/12/ctr-key", "default", "ctr-key", true},
		{"k8s.io/3/a/b/c", "k8s.io", "a/b/c", true},
		{"plain-key", "", "", false},
		{"default/x/key", "", "", false},
		{"/4/key", "", "", false},
		{"default/5/", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := sn.Prepare(ctx, tc.name, ""); err != nil {
				t.Fatal(err)
			}
			id := idOf(t, sn, tc.name)
			ns, key, ok, err := sn.ContainerdKey(ctx, id)
			if err != nil || ns != tc.ns || key != tc.key || ok != tc.ok {
				t.Errorf("ContainerdKey(%s) = %q, %q, %v, %v; want %q, %q, %v", id, ns, key, ok, err, tc.ns, tc.key, tc.ok)
			}
		})
	}
}

// TestAnnotationClassFromOutside: the class annotation is set by whoever
// writes a pod spec; a value that cannot be a class name is refused and
// nothing of it is recorded.
func TestAnnotationClassFromOutside(t *testing.T) {
	ctx := context.Background()
	sn, root := newTestSnapshotter(t)
	mounts, err := sn.Prepare(ctx, "hostile", "")
	if err != nil {
		t.Fatal(err)
	}
	rootfs := mountRootfs(t, mounts)
	for _, class := range []string{"../../../etc/passwd", "a\nb", string(make([]byte, 4096)), "\xff\xfe"} {
		_, err := sn.images.ContainerStarting(ctx, images.Container{ID: "c", RootFS: rootfs, Annotations: map[string]string{config.AnnotationClass: class}})
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("class %q: %v, want an invalid argument", fmt.Sprintf("%.20s", class), err)
		}
	}
	id := statusOf(t, sn, "hostile").ID
	if _, err := os.Stat(filepath.Join(root, "snapshots", id, images.ClassFile)); !os.IsNotExist(err) {
		t.Errorf("a class file was written: %v", err)
	}
}
