package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/moby/sys/mountinfo"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/images"
	"github.com/snugfs/snug/internal/roottest"
)

// TestReconcileAfterCrash leaves behind, by hand, what a daemon killed at
// each step would leave, then starts a new snapshotter on it: every
// recorded snapshot is served with its data, each image mounted once, and
// everything not recorded is gone.
func TestReconcileAfterCrash(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	ctx := context.Background()
	root := roottest.TempDir(t)
	cfg := testConfig(root)
	sn := openSnapshotter(t, cfg)
	// A committed base layer with a file, and an active snapshot on it with
	// data of its own.
	writeVia(t, sn, "base-active", "", "base.txt", "base")
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	writeVia(t, sn, "work", "base", "work.txt", "work")
	workID := idOf(t, sn, "work")
	// A second active snapshot that will look like a commit that was
	// recorded but not finished: commit it, then put a rw image back and
	// mount it on mnt, as before the swap.
	writeVia(t, sn, "half-active", "base", "half.txt", "half")
	halfID := idOf(t, sn, "half-active")
	if err := sn.Commit(ctx, "half", "half-active"); err != nil {
		t.Fatal(err)
	}
	sn.close(false) // the daemon dies: every image stays mounted

	dirs := filepath.Join(root, "snapshots")
	// 1. Commit recorded, swap not done: rw image mounted on mnt again.
	halfMnt := filepath.Join(dirs, halfID, mountDir)
	if err := imagefs.UnmountBelow(ctx, halfMnt); err != nil {
		t.Fatal(err)
	}
	if err := imagefs.Create(ctx, filepath.Join(dirs, halfID, rwImage), imagefs.CreateOptions{Quota: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := imagefs.Mount(ctx, filepath.Join(dirs, halfID, rwImage), halfMnt, imagefs.MountOptions{}); err != nil {
		t.Fatal(err)
	}
	// 2. Commit not recorded: a stray layer image, the upper dir staged.
	workMnt := filepath.Join(dirs, workID, mountDir)
	os.WriteFile(filepath.Join(dirs, workID, layerImage), []byte("partial"), 0o600)
	halfMade := filepath.Join(dirs, workID, layerImage+".0badc0de.snug-tmp")
	os.WriteFile(halfMade, []byte("partial"), 0o600)
	// (imagefs.CreateLayer stages its source as .snug-layer-stage/fs.)
	stage := filepath.Join(workMnt, ".snug-layer-stage")
	os.Mkdir(stage, 0o700)
	if err := os.Rename(filepath.Join(workMnt, upperDir), filepath.Join(stage, imagefs.LayerDir)); err != nil {
		t.Fatal(err)
	}
	// 3. Active image unmounted (a reboot, or an unmount by hand).
	if err := imagefs.UnmountBelow(ctx, workMnt); err != nil {
		t.Fatal(err)
	}
	// 4. Prepare that never recorded: an unrecorded id with a mounted image,
	// and a temporary directory.
	ghost := filepath.Join(dirs, "999")
	os.MkdirAll(filepath.Join(ghost, mountDir), 0o755)
	if err := imagefs.Create(ctx, filepath.Join(ghost, rwImage), imagefs.CreateOptions{Quota: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := imagefs.Mount(ctx, filepath.Join(ghost, rwImage), filepath.Join(ghost, mountDir), imagefs.MountOptions{}); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dirs, "new-123", mountDir), 0o755)

	sn = startSnapshotter(t, cfg)
	for _, gone := range []string{ghost, filepath.Join(dirs, "new-123"), halfMade, filepath.Join(dirs, workID, layerImage), filepath.Join(dirs, halfID, rwImage)} {
		if _, err := os.Lstat(gone); !os.IsNotExist(err) {
			t.Errorf("%s left after reconcile: %v", gone, err)
		}
	}
	// Every snapshot's data is back, through the mounts containerd uses.
	readVia(t, sn, "check-work", "work", map[string]string{"base.txt": "base", "work.txt": "work"}, true)
	readVia(t, sn, "check-half", "half", map[string]string{"base.txt": "base", "half.txt": "half"}, false)
	// One mount per image, and only snug's.
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dirs))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, m := range mounts {
		seen[m.Mountpoint]++
	}
	for mp, n := range seen {
		if n != 1 || !strings.HasSuffix(mp, "/"+mountDir) {
			t.Errorf("%s mounted %d times", mp, n)
		}
	}
	// The images of the recorded snapshots: base, work and half (the
	// check view has none).
	if len(seen) != 3 {
		t.Errorf("%d images mounted, want 3: %v", len(seen), seen)
	}
}

// writeVia prepares key on parent, writes a file through its mounts and
// unmounts them.
func writeVia(t *testing.T, sn *Snapshotter, key, parent, name, content string) {
	t.Helper()
	ctx := context.Background()
	mounts, err := sn.Prepare(ctx, key, parent)
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if err := mount.All(mounts, target); err != nil {
		t.Fatal(err)
	}
	defer mount.UnmountAll(target, 0)
	if err := os.WriteFile(filepath.Join(target, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// readVia checks files through the mounts containerd would use: an active
// snapshot's own mounts again, or a new view of a committed one.
func readVia(t *testing.T, sn *Snapshotter, key, parent string, want map[string]string, parentActive bool) {
	t.Helper()
	ctx := context.Background()
	var mounts []mount.Mount
	var err error
	if parentActive {
		mounts, err = sn.Mounts(ctx, parent) // an active snapshot's own mounts
	} else {
		mounts, err = sn.View(ctx, key, parent)
	}
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if err := mount.All(mounts, target); err != nil {
		t.Fatal(err)
	}
	defer mount.UnmountAll(target, 0)
	for name, content := range want {
		b, err := os.ReadFile(filepath.Join(target, name))
		if err != nil || string(b) != content {
			t.Errorf("%s via %s: %q %v, want %q", name, parent, b, err, content)
		}
	}
}

func idOf(t *testing.T, sn *Snapshotter, key string) string {
	t.Helper()
	var id string
	for _, st := range mustStatus(t, sn) {
		if st.Snapshot == key {
			id = st.ID
		}
	}
	if id == "" {
		t.Fatalf("no id for %s", key)
	}
	return id
}

func mustStatus(t *testing.T, sn *Snapshotter) []images.ImageStatus {
	t.Helper()
	st, err := sn.images.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestPrepareMountsUnmountedParent: a parent layer that is not mounted (a
// commit whose swap failed) is mounted when a child is prepared.
func TestPrepareMountsUnmountedParent(t *testing.T) {
	ctx := context.Background()
	sn, _ := newTestSnapshotter(t)
	writeVia(t, sn, "base-active", "", "base.txt", "base")
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	id := idOf(t, sn, "base")
	if err := imagefs.UnmountBelow(ctx, sn.mountPath(id)); err != nil {
		t.Fatal(err)
	}
	readVia(t, sn, "v", "base", map[string]string{"base.txt": "base"}, false)
}

// TestRestartKeepsFlushes: an active snapshot's image stays mounted across
// a daemon restart, on the loop device an earlier daemon attached; if that
// device's cache was set to write through meanwhile, the new daemon makes it
// write-back again when it takes the image over.
func TestRestartKeepsFlushes(t *testing.T) {
	cfg := testConfig(roottest.TempDir(t))
	sn := openSnapshotter(t, cfg)
	writeVia(t, sn, "work", "", "work.txt", "work")
	image := filepath.Join(sn.snapshotDir(idOf(t, sn, "work")), rwImage)
	sn.close(false) // the daemon dies: the image stays mounted

	m, err := imagefs.FindMount(image)
	if err != nil {
		t.Fatal(err)
	}
	mode := "/sys/block/" + filepath.Base(m.Device) + "/queue/write_cache"
	if err := os.WriteFile(mode, []byte("write through"), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile(mode, []byte("write back"), 0) })

	sn = startSnapshotter(t, cfg)
	if got, err := os.ReadFile(mode); err != nil || strings.TrimSpace(string(got)) != "write back" {
		t.Errorf("%s of the image taken over: %q (%v), want write back", m.Device, got, err)
	}
}
