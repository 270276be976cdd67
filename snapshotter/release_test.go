package snapshotter

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/images"
	"github.com/snugfs/snug/internal/roottest"
	"github.com/snugfs/snug/internal/sharedmount"
)

// containerOnBase commits a layer "base" and mounts, where a runtime
// would, the root of a container on it: an overlay of base and the rw
// image of the active snapshot "running".
func containerOnBase(t *testing.T, sn *Snapshotter) (rootfs string) {
	t.Helper()
	ctx := context.Background()
	writeVia(t, sn, "base-active", "", "base.txt", "base")
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	mounts, err := sn.Prepare(ctx, "running", "base")
	if err != nil {
		t.Fatal(err)
	}
	rootfs = t.TempDir()
	if err := mount.All(mounts, rootfs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mount.UnmountAll(rootfs, 0) })
	return rootfs
}

// TestCloseReleasesUnusedImages: Close unmounts (and so detaches) every
// image nothing uses, and keeps the images a running container's overlay
// uses, its layer and its rw image; New mounts the others again.
func TestCloseReleasesUnusedImages(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	ctx := context.Background()
	root := roottest.TempDir(t)
	cfg := testConfig(root)
	sn := openSnapshotter(t, cfg)
	writeVia(t, sn, "other-active", "", "other.txt", "other")
	if err := sn.Commit(ctx, "other", "other-active"); err != nil {
		t.Fatal(err)
	}
	rootfs := containerOnBase(t, sn)
	// An active snapshot no container uses.
	if _, err := sn.Prepare(ctx, "idle", "other"); err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, key := range []string{"base", "other", "running", "idle"} {
		ids[key] = idOf(t, sn, key)
	}
	image := func(key string) string {
		name := layerImage
		if key == "running" || key == "idle" {
			name = rwImage
		}
		return filepath.Join(root, "snapshots", ids[key], name)
	}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	for key, wantMounted := range map[string]bool{"base": true, "running": true, "other": false, "idle": false} {
		_, err := imagefs.FindMount(image(key))
		attached, aerr := imagefs.IsAttached(image(key))
		if aerr != nil {
			t.Fatal(aerr)
		}
		if mounted := err == nil; mounted != wantMounted || attached != wantMounted {
			t.Errorf("%s after Close: mounted %v, attached %v; want %v", key, mounted, attached, wantMounted)
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "still.txt"), []byte("x"), 0o644); err != nil {
		t.Fatalf("the container's root after Close: %v", err)
	}

	sn = startSnapshotter(t, cfg)
	for key := range ids {
		if _, err := imagefs.FindMount(image(key)); err != nil {
			t.Errorf("%s after New: %v", key, err)
		}
	}
	readVia(t, sn, "check-other", "other", map[string]string{"other.txt": "other"}, false)
}

// TestImagesKeptByCloseDetachWhenUnmountedElsewhere: the images Close keeps
// for a running container (snug serve's SIGTERM) are the host's to unmount
// afterwards. Whoever unmounts them, the container's runtime and then an
// operator or a test's sweep with a plain umount, finds no loop device
// left behind: nothing of snug's holds them once it is closed.
func TestImagesKeptByCloseDetachWhenUnmountedElsewhere(t *testing.T) {
	ctx := context.Background()
	sn, root := newTestSnapshotter(t)
	rootfs := containerOnBase(t, sn)
	if _, err := sn.images.ContainerStarting(ctx, images.Container{ID: "c1", RootFS: rootfs}); err != nil {
		t.Fatal(err)
	}
	ids := []string{idOf(t, sn, "base"), idOf(t, sn, "running")}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	kept, err := roottest.Leftovers(root)
	if err != nil || len(kept) < 4 { // two images mounted, two loop devices
		t.Fatalf("Close kept %v (%v), want the container's two images", kept, err)
	}
	if err := mount.UnmountAll(rootfs, 0); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		mnt := filepath.Join(root, "snapshots", id, mountDir)
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Fatalf("snapshot %s: plain unmount after Close: %v", id, err)
		}
	}
	// The shared bind of root stays while Close leaves images mounted below
	// it; the next start would find it. With the images gone, it can go.
	if err := sharedmount.Undo(root); err != nil {
		t.Fatal(err)
	}
	var left []string
	for range 100 {
		if left, err = roottest.Leftovers(root); err != nil || len(left) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(left) > 0 || err != nil {
		t.Fatalf("after the unmounts: %v (%v)", left, err)
	}
}

// TestStartCheckSparesSealedImages: the images a stop unmounted cleanly are
// sealed, and the next start checks only those written since. Both images
// here get the same damage while snug is down; the one whose seal is made
// to match again (as if nothing had written it) is mounted unchecked, the
// other is found damaged and left unmounted for the error monitor.
func TestStartCheckSparesSealedImages(t *testing.T) {
	roottest.Require(t, "debugfs")
	ctx := context.Background()
	sn, root := newTestSnapshotter(t)
	images := map[string]string{}
	for _, key := range []string{"spared", "checked"} {
		if _, err := sn.Prepare(ctx, key, ""); err != nil {
			t.Fatal(err)
		}
		images[key] = filepath.Join(root, "snapshots", idOf(t, sn, key), rwImage)
	}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	for key, img := range images {
		if !imagefs.Sealed(img) {
			t.Fatalf("%s: not sealed by Close", key)
		}
		if out, err := exec.Command("debugfs", "-w", "-R", "sif <2> links_count 9", img).CombinedOutput(); err != nil {
			t.Fatalf("debugfs: %v\n%s", err, out)
		}
	}
	if err := imagefs.Seal(images["spared"]); err != nil {
		t.Fatal(err)
	}
	sn = startSnapshotter(t, testConfig(root))
	for key, img := range images {
		_, err := imagefs.FindMount(img)
		if mounted := err == nil; mounted != (key == "spared") {
			t.Errorf("%s after the start-up check: mounted %v", key, mounted)
		}
	}
	var failed failedMounts
	sn.images.Observe(ctx, &failed)
	if len(failed) != 1 {
		t.Errorf("start-up left %d images for the error monitor, want 1 (checked): %v", len(failed), failed)
	}
}

// failedMounts is a mount observer that records the images start-up could
// not mount, as the error monitor learns of them.
type failedMounts []error

func (f *failedMounts) Mounted(context.Context, string, bool, *imagefs.Mounted) {}
func (f *failedMounts) Unmounting(string)                                       {}
func (f *failedMounts) MountFailed(_ context.Context, _ string, _ bool, err error) {
	*f = append(*f, err)
}

// TestCleanupCommitsNothing: Cleanup deletes a snapshot directory nothing
// records, and its write transaction (which keeps Prepares out while it
// looks) ends rolled back: the metadata store's transaction id does not
// move, so the store is not synced for it.
func TestCleanupCommitsNothing(t *testing.T) {
	ctx := context.Background()
	sn, root := newTestSnapshotter(t)
	lastCommit := func() int {
		_, tx, err := sn.ms.TransactionContext(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		return tx.(*bolt.Tx).ID()
	}
	stray := filepath.Join(root, "snapshots", "9999")
	if err := os.MkdirAll(filepath.Join(stray, "fs"), 0o755); err != nil {
		t.Fatal(err)
	}
	before := lastCommit()
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Errorf("Cleanup left the unrecorded directory %s: %v", stray, err)
	}
	if after := lastCommit(); after != before {
		t.Errorf("Cleanup committed: transaction id %d, was %d", after, before)
	}
}
