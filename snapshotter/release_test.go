package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// TestCloseReleasesUnusedImages: Close unmounts (and so detaches) every
// image nothing uses, and keeps the images a running container's overlay
// uses, its layer and its rw image; New mounts the others again.
func TestCloseReleasesUnusedImages(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	ctx := context.Background()
	root := roottest.TempDir(t)
	cfg := testConfig(root)
	sn, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	writeVia(t, sn, "base-active", "", "base.txt", "base")
	if err := sn.Commit(ctx, "base", "base-active"); err != nil {
		t.Fatal(err)
	}
	writeVia(t, sn, "other-active", "", "other.txt", "other")
	if err := sn.Commit(ctx, "other", "other-active"); err != nil {
		t.Fatal(err)
	}
	// A container on base: its root is an overlay of base and its rw image.
	mounts, err := sn.Prepare(ctx, "running", "base")
	if err != nil {
		t.Fatal(err)
	}
	rootfs := t.TempDir()
	if err := mount.All(mounts, rootfs); err != nil {
		t.Fatal(err)
	}
	defer mount.UnmountAll(rootfs, 0)
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

	sn, err = New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	for key := range ids {
		if _, err := imagefs.FindMount(image(key)); err != nil {
			t.Errorf("%s after New: %v", key, err)
		}
	}
	readVia(t, sn, "check-other", "other", map[string]string{"other.txt": "other"}, false)
}
