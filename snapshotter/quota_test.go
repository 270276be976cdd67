package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/imagefs"
)

func TestAnnotatedQuota(t *testing.T) {
	for _, tc := range []struct {
		annotations map[string]string
		quota       int64
		ok, bad     bool
	}{
		{annotations: nil},
		{annotations: map[string]string{"io.snugfs.policy": "big"}},
		{annotations: map[string]string{AnnotationQuota: "512MiB"}, quota: 512 << 20, ok: true},
		{annotations: map[string]string{AnnotationQuota: "1G"}, quota: 1 << 30, ok: true},
		{annotations: map[string]string{AnnotationMaxSize: "268435456"}, quota: 256 << 20, ok: true},
		// snug's own wins over containerd's name.
		{annotations: map[string]string{AnnotationMaxSize: "268435456", AnnotationQuota: "1GiB"}, quota: 1 << 30, ok: true},
		{annotations: map[string]string{AnnotationQuota: "lots"}, ok: true, bad: true},
		{annotations: map[string]string{AnnotationQuota: "1MiB"}, ok: true, bad: true},
		{annotations: map[string]string{AnnotationQuota: "17TiB"}, ok: true, bad: true},
		{annotations: map[string]string{AnnotationMaxSize: "512MiB"}, ok: true, bad: true}, // bytes only, as the label
		{annotations: map[string]string{AnnotationMaxSize: "-1"}, ok: true, bad: true},
	} {
		q, _, ok, err := annotatedQuota(tc.annotations)
		if ok != tc.ok || (err != nil) != tc.bad || (!tc.bad && q != tc.quota) {
			t.Errorf("%v: quota %d ok %t err %v; want %d %t bad %t", tc.annotations, q, ok, err, tc.quota, tc.ok, tc.bad)
		}
		if tc.bad && !errdefs.IsInvalidArgument(err) {
			t.Errorf("%v: %v is not an invalid argument", tc.annotations, err)
		}
	}
}

// FuzzAnnotatedQuota: whatever a pod spec carries, the parser answers a
// quota in range or an invalid argument, and never panics.
func FuzzAnnotatedQuota(f *testing.F) {
	for _, s := range []string{"512MiB", "1.5G", "268435456", "", "0x10", "1e9", "9999999999999999999999"} {
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, quota, maxSize string) {
		for _, ann := range []map[string]string{{AnnotationQuota: quota}, {AnnotationMaxSize: maxSize}} {
			q, _, ok, err := annotatedQuota(ann)
			if !ok {
				t.Fatalf("%v: not seen", ann)
			}
			if err != nil && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("%v: %v", ann, err)
			}
			if err == nil && (q < imagefs.MinQuota || q > MaxQuota) {
				t.Fatalf("%v: quota %d out of range", ann, q)
			}
		}
	})
}

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
		_, err := sn.ContainerStarting(ctx, Container{ID: "c", RootFS: rootfs, Annotations: map[string]string{AnnotationQuota: quota}})
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
	var n int64
	for ; n < 128<<20; n += 1 << 20 {
		if _, err := f.Write(buf); err != nil {
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
