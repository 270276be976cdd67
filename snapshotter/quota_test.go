package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/images"
)

// TestAnnotationQuotaAppliedAtStart: a container's quota annotation is
// applied by the prestart call, before its process writes: the writer gets
// ENOSPC at the annotated quota, a second start with the same annotation
// changes nothing, and a quota the image cannot take is refused.
func TestAnnotationQuotaAppliedAtStart(t *testing.T) {
	ctx := context.Background()
	sn, _ := newTestSnapshotter(t)
	mounts, err := sn.Prepare(ctx, "annotated", "")
	if err != nil {
		t.Fatal(err)
	}
	rootfs := mountRootfs(t, mounts)
	start := func(quota string) error {
		_, err := sn.images.ContainerStarting(ctx, images.Container{ID: "c", RootFS: rootfs, Annotations: map[string]string{config.AnnotationQuota: quota}})
		return err
	}
	if err := start("64MiB"); err != nil {
		t.Fatal(err)
	}
	if q := statusOf(t, sn, "annotated").QuotaBytes; q != 64<<20 {
		t.Fatalf("quota %d after a start annotated 64MiB", q)
	}
	if err := start("64MiB"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"lots", "100TiB", "64GiB"} { // 64 GiB: above the 32 GiB ceiling
		if err := start(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("start annotated %q: %v, want an invalid argument", bad, err)
		}
	}
	buf := make([]byte, 1<<20)
	f, err := os.Create(filepath.Join(rootfs, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Each MiB is synced: the test is of the quota, not of how fast the
	// window grows ahead of a writer at page-cache speed (32 MiB in a few
	// ms, less than one check; integration/burst_test.go measures that).
	var n int64
	for ; n < 128<<20; n += 1 << 20 {
		_, err := f.Write(buf)
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	if n >= 64<<20 || n < 40<<20 {
		t.Fatalf("wrote %d MiB into a 64 MiB quota", n>>20)
	}
}

// TestAnnotationsAppliedAtMounts: containerd asks for a container's root
// mounts when it creates the task; the container's annotations (read from
// containerd, here a fake) are applied then: its image is made again with
// the inode count asked for while it holds nothing, and gets its quota. An
// image that holds data keeps its inodes, and the request is refused.
func TestAnnotationsAppliedAtMounts(t *testing.T) {
	ctx := context.Background()
	sn, _ := newTestSnapshotter(t)
	asked := map[string]map[string]string{
		"fresh": {config.AnnotationInodes: "5000", config.AnnotationQuota: "64MiB"},
		"used":  {config.AnnotationInodes: "5000"},
	}
	var lookups int
	sn.SetAnnotationSource(func(_ context.Context, ns, key string) (map[string]string, error) {
		lookups++
		if ns != "default" {
			t.Errorf("namespace %q", ns)
		}
		return asked[key], nil
	})
	if _, err := sn.Prepare(ctx, "default/1/fresh", ""); err != nil {
		t.Fatal(err)
	}
	before := statusOf(t, sn, "default/1/fresh")
	mounts, err := sn.Mounts(ctx, "default/1/fresh")
	if err != nil {
		t.Fatal(err)
	}
	after := statusOf(t, sn, "default/1/fresh")
	t.Logf("inodes %d -> %d, quota %d MiB -> %d MiB", before.InodesTotal, after.InodesTotal, before.QuotaBytes>>20, after.QuotaBytes>>20)
	if after.InodesTotal < 5000 || after.InodesTotal > 5000+4096 || after.QuotaBytes != 64<<20 || after.UUID == before.UUID {
		t.Fatalf("after Mounts: %d inodes, quota %d, uuid %s (was %s)", after.InodesTotal, after.QuotaBytes, after.UUID, before.UUID)
	}
	if _, err := sn.Mounts(ctx, "default/1/fresh"); err != nil || lookups != 1 {
		t.Fatalf("a second Mounts: %v, %d lookups (want the annotations applied once)", err, lookups)
	}
	// A repair serves the image anew (Offline): its restart's Mounts
	// applies the annotations read before, without asking containerd.
	if err := sn.Offline(ctx, after.ID, func(string) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Mounts(ctx, "default/1/fresh"); err != nil || lookups != 1 {
		t.Fatalf("Mounts after the image was served anew: %v, %d lookups (want 1)", err, lookups)
	}
	if q := statusOf(t, sn, "default/1/fresh").QuotaBytes; q != 64<<20 {
		t.Fatalf("quota after the image was served anew: %d MiB", q>>20)
	}
	rootfs := mountRootfs(t, mounts)
	var made int64
	for ; made < 10000; made++ {
		f, err := os.Create(filepath.Join(rootfs, fmt.Sprint(made)))
		if err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
		f.Close()
	}
	if made > after.InodesTotal || made < after.InodesTotal-64 {
		t.Fatalf("made %d files in an image of %d inodes", made, after.InodesTotal)
	}

	// An image that holds data: refused, and left as it was.
	used, err := sn.Prepare(ctx, "default/2/used", "")
	if err != nil {
		t.Fatal(err)
	}
	usedRoot := mountRootfs(t, used)
	if err := os.WriteFile(filepath.Join(usedRoot, "data"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Mounts(ctx, "default/2/used"); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("Mounts of an image holding data, annotated for other inodes: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(usedRoot, "data")); err != nil || string(b) != "kept" {
		t.Fatalf("the data: %q, %v", b, err)
	}
}
