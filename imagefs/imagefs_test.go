package imagefs

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/roottest"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
	gib = int64(1) << 30
)

// newImage creates an image in a fresh directory that is swept clean (no
// mount, no loop device left) when the test ends, pass or fail.
func newImage(t testing.TB, quota, window int64) (path, dir string) {
	t.Helper()
	return newImageWith(t, CreateOptions{Quota: quota, Window: window, DirectIO: true})
}

// newImageWith is newImage with any create options.
func newImageWith(t testing.TB, o CreateOptions) (path, dir string) {
	t.Helper()
	roottest.Require(t, "mkfs.ext4", "e2fsck", "resize2fs")
	dir = roottest.TempDir(t)
	path = filepath.Join(dir, "img")
	if err := Create(context.Background(), path, o); err != nil {
		t.Fatal(err)
	}
	return path, dir
}

func mountImage(t testing.TB, path, dir string) *Mounted {
	t.Helper()
	mnt := filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := Mount(context.Background(), path, mnt, MountOptions{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmount(context.Background()) })
	return m
}

// overlayOn mounts an overlay whose upper dir is in the mounted image, as
// a container's root is, and unmounts it when the test ends. It returns
// the overlay's mount point and its lower dir.
func overlayOn(t *testing.T, m *Mounted) (rootfs, lower string) {
	t.Helper()
	for _, d := range []string{"upper", "work"} {
		if err := os.Mkdir(filepath.Join(m.Dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lower, rootfs = t.TempDir(), t.TempDir()
	data := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, m.Dir, m.Dir)
	if err := unix.Mount("overlay", rootfs, "overlay", 0, data); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(rootfs, 0) })
	return rootfs, lower
}

// requirePrivate fails unless the file is readable and writable by its
// owner (root) alone: an image holds a container's files.
func requirePrivate(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
}

// requireClean fails the test unless e2fsck -fn finds the unmounted image clean.
func requireClean(t *testing.T, path string) {
	t.Helper()
	res, err := Check(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Clean() {
		t.Fatalf("e2fsck -fn %s: exit %d\n%s", path, res.ExitCode, res.Output)
	}
}

func fileFootprint(t *testing.T, path string) int64 {
	t.Helper()
	n, err := Footprint(path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// writeFiles writes n files of size bytes of random data under dir.
func writeFiles(t *testing.T, dir string, n int, size int64) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, size)
	rand.Read(buf)
	for i := range n {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCreateFootprintIsSmall(t *testing.T) {
	// At the default policy's ceiling (image.max_quota, 32 GiB).
	path, dir := newImageWith(t, CreateOptions{Quota: 10 * gib, Ceiling: 32 * gib, Window: 256 * mib, DirectIO: true})
	fp := fileFootprint(t, path)
	t.Logf("fresh 10 GiB image at a 32 GiB ceiling: %d KiB on the host", fp>>10)
	if fp > 8*mib {
		t.Fatalf("fresh 10GiB image costs %d bytes, want <= 8MiB", fp)
	}
	st, err := Stat(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if st.QuotaBytes != 10*gib || st.WindowBytes > 256*mib || st.WindowBytes < 200*mib {
		t.Fatalf("quota %d window %d, want 10GiB and about 256MiB", st.QuotaBytes, st.WindowBytes)
	}
	if st.Health != "ok" || st.Errors != 0 || st.Mounted {
		t.Fatalf("stats of a fresh image: %+v", st)
	}
	requireClean(t, path)
	requirePrivate(t, path)

	// Every image gets its own UUID: ext4's fsid, which fanotify reports,
	// derives from it.
	other := filepath.Join(dir, "img2")
	if err := Create(context.Background(), other, CreateOptions{Quota: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	a, _ := ReadSuperblock(path)
	b, _ := ReadSuperblock(other)
	if a.UUID == b.UUID {
		t.Fatal("two images share a UUID")
	}
}

func TestCreateRefusesBadInput(t *testing.T) {
	roottest.Require(t, "mkfs.ext4")
	dir := roottest.TempDir(t)
	ctx := context.Background()
	existing := filepath.Join(dir, "existing")
	os.WriteFile(existing, []byte("keep me"), 0o600)

	for _, tc := range []struct {
		name string
		path string
		o    CreateOptions
		want error
	}{
		{"quota below minimum", filepath.Join(dir, "small"), CreateOptions{Quota: 16 * mib}, ErrQuotaTooSmall},
		{"existing file", existing, CreateOptions{Quota: 64 * mib}, ErrExists},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Create(ctx, tc.path, tc.o); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Fatal("Create touched an existing file")
	}
	assertOnly(t, dir, "existing")
}

func TestCreateOnFullHostLeavesNothing(t *testing.T) {
	roottest.Require(t, "mkfs.ext4")
	dir := roottest.TempDir(t)
	// A host filesystem with 128 KiB: mkfs of a 10 GiB image needs more.
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=128k"); err != nil {
		t.Fatal(err)
	}
	err := Create(context.Background(), filepath.Join(dir, "img"), CreateOptions{Quota: 10 * gib, JournalSize: 64 * mib})
	if !errors.Is(err, ErrHostFull) {
		t.Fatalf("err = %v, want ErrHostFull", err)
	}
	assertOnly(t, dir)
}

// assertOnly fails unless dir holds exactly the named entries.
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if fmt.Sprint(got) != fmt.Sprint(names) && !(len(got) == 0 && len(names) == 0) {
		t.Fatalf("%s holds %v, want %v", dir, got, names)
	}
}

func TestNotAnImage(t *testing.T) {
	roottest.Require(t, "e2fsck")
	dir := roottest.TempDir(t)
	ctx := context.Background()
	text := filepath.Join(dir, "text")
	os.WriteFile(text, make([]byte, 1<<20), 0o600)
	xfsLike := filepath.Join(dir, "zeros")
	os.WriteFile(xfsLike, nil, 0o600)
	os.Truncate(xfsLike, 64*mib)
	for _, p := range []string{text, xfsLike, dir, filepath.Join(dir, "missing")} {
		if _, err := Stat(ctx, p); err == nil {
			t.Errorf("Stat(%s) succeeded", p)
		}
		if _, err := Check(ctx, p); err == nil {
			t.Errorf("Check(%s) succeeded", p)
		}
		if err := Shrink(ctx, p, 64*mib, true); err == nil {
			t.Errorf("Shrink(%s) succeeded", p)
		}
		if err := WithMount(ctx, p, MountOptions{}, func(*Mounted) error { return nil }); err == nil {
			t.Errorf("mount of %s succeeded", p)
		}
	}
	if _, err := Stat(ctx, text); !errors.Is(err, ErrNotImage) {
		t.Errorf("Stat(text) = %v, want ErrNotImage", err)
	}
	// An ext4 filesystem snug did not make has no balloon.
	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, nil, 0o600)
	os.Truncate(plain, 64*mib)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", plain).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if _, err := Stat(ctx, plain); !errors.Is(err, ErrNotSnugImage) {
		t.Errorf("Stat(plain ext4) = %v, want ErrNotSnugImage", err)
	}
}

func TestDataStaysInsideWindow(t *testing.T) {
	path, dir := newImage(t, 4*gib, 256*mib)
	m := mountImage(t, path, dir)
	// 40 top-level directories: ext4's Orlov allocator would spread them over
	// the whole disk.
	for i := range 40 {
		writeFiles(t, filepath.Join(m.Dir, fmt.Sprint("d", i)), 2, 2*mib)
	}
	roottest.Syncfs(t, m.Dir)
	st, err := m.Stat()
	if err != nil {
		t.Fatal(err)
	}
	var checked int
	filepath.Walk(m.Dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || !info.Mode().IsRegular() || filepath.Base(filepath.Dir(p)) == MetaDir {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		exts, err := fileExtents(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range exts {
			if e.Physical+e.Length > st.WindowBytes {
				t.Errorf("%s: extent at %d+%d ends beyond the window %d", p, e.Physical, e.Length, st.WindowBytes)
			}
		}
		checked++
		return nil
	})
	if checked != 80 {
		t.Fatalf("checked %d files, want 80", checked)
	}
	if fp := fileFootprint(t, path); fp > st.WindowBytes+8*mib {
		t.Fatalf("footprint %d beyond window %d", fp, st.WindowBytes)
	}
	if err := m.Unmount(context.Background()); err != nil {
		t.Fatal(err)
	}
	requireClean(t, path)
}

func TestReclaimReturnsFootprintToUsage(t *testing.T) {
	path, dir := newImage(t, 10*gib, 256*mib)
	m := mountImage(t, path, dir)
	ctx := context.Background()
	keep := filepath.Join(m.Dir, "keep")
	writeFiles(t, keep, 4, 8*mib)
	// 1 GiB of files of mixed sizes (4 KiB to 8 MiB, evenly spread on a log
	// scale, like the churn benchmark), the window growing ahead of them.
	churn := filepath.Join(m.Dir, "churn")
	os.Mkdir(churn, 0o755)
	buf := make([]byte, 8*mib)
	rand.Read(buf)
	var total int64
	for i := 0; total < gib; i++ {
		if _, err := m.EnsureFree(ctx, 512*mib); err != nil {
			t.Fatal(err)
		}
		size := 4 * kib << (i % 12) // 4 KiB .. 8 MiB
		if err := os.WriteFile(filepath.Join(churn, fmt.Sprint(i)), buf[:size], 0o644); err != nil {
			t.Fatal(err)
		}
		total += int64(size)
	}
	roottest.Syncfs(t, m.Dir)
	if fp := fileFootprint(t, path); fp < gib {
		t.Fatalf("footprint %d after writing 1GiB: the test wrote less than it meant", fp)
	}
	if err := os.RemoveAll(churn); err != nil {
		t.Fatal(err)
	}
	for round := range 2 { // a second Reclaim must be harmless
		res, err := m.Reclaim(ctx, ReclaimOptions{Headroom: 64 * mib})
		if err != nil {
			t.Fatal(err)
		}
		st, err := m.Stat()
		if err != nil {
			t.Fatal(err)
		}
		limit := PackedFootprint(st.UsedBytes)
		t.Logf("round %d: used %d footprint %d (limit %d) window %d->%d trimmed %d in %v",
			round, st.UsedBytes, st.FootprintBytes, limit, res.WindowBefore, res.WindowAfter, res.TrimmedBytes, res.Duration)
		if st.FootprintBytes > limit {
			t.Fatalf("footprint %d after reclaim, want <= %d (used %d)", st.FootprintBytes, limit, st.UsedBytes)
		}
		if st.FreeBytes < 64*mib || st.FreeBytes > 80*mib {
			t.Fatalf("free in window %d after reclaim with 64MiB headroom", st.FreeBytes)
		}
	}
	if b, err := os.ReadFile(filepath.Join(keep, "3")); err != nil || int64(len(b)) != 8*mib {
		t.Fatalf("kept file lost: %v", err)
	}
	if err := m.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	requireClean(t, path)
}

func TestGrowIsIdempotentAndBounded(t *testing.T) {
	path, dir := newImage(t, 1*gib, 64*mib)
	m := mountImage(t, path, dir)
	ctx := context.Background()
	for range 2 {
		w, err := m.Grow(ctx, 512*mib)
		if err != nil {
			t.Fatal(err)
		}
		if w < 512*mib || w > 520*mib {
			t.Fatalf("window %d after Grow(512MiB)", w)
		}
	}
	if w, _ := m.Grow(ctx, 128*mib); w < 512*mib {
		t.Fatalf("Grow to a smaller window shrank it to %d", w)
	}
	w, err := m.Grow(ctx, 10*gib)
	if err != nil || w != gib {
		t.Fatalf("Grow beyond the quota: window %d, %v; want the quota", w, err)
	}
	st, _ := m.Stat()
	if st.BalloonBytes != 0 || st.FreeBytes < 900*mib {
		t.Fatalf("at full window: %+v", st)
	}
	if err := m.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	requireClean(t, path)
}

// TestWatcherGrowsAheadOfStreamingWriter streams data at full speed into an
// image whose window starts small; the watcher must grow it so that the writer
// sees ENOSPC only at the quota.
func TestWatcherGrowsAheadOfStreamingWriter(t *testing.T) {
	const quota = 3 * gib
	path, dir := newImage(t, quota, 64*mib)
	m := mountImage(t, path, dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var grows atomic.Int64
	w := NewWatcher(10*time.Millisecond, Observer{
		Grew:   func(string, int64) { grows.Add(1) },
		Failed: func(_ string, err error) { t.Error(err) },
	})
	// The writer starts with the headroom free, as a container does
	// (the snapshotter frees it before Prepare returns).
	if _, err := m.EnsureFree(ctx, 64*mib); err != nil {
		t.Fatal(err)
	}
	w.Add("stream", m, Policy{Headroom: 64 * mib, Burst: 30 * time.Millisecond})
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	f, err := os.Create(filepath.Join(m.Dir, "stream"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4*mib)
	rand.Read(buf)
	var written int64
	start := time.Now()
	for {
		n, err := f.Write(buf)
		written += int64(n)
		if err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	elapsed := time.Since(start)
	f.Close()
	cancel()
	<-done
	st, _ := m.Stat()
	t.Logf("wrote %d MiB in %v (%.0f MiB/s), %d grows; used %d of quota %d, balloon %d",
		written>>20, elapsed, float64(written>>20)/elapsed.Seconds(), grows.Load(), st.UsedBytes, st.QuotaBytes, st.BalloonBytes)
	// ENOSPC is right only when the balloon is gone: the quota is reached.
	if st.BalloonBytes != 0 {
		t.Fatalf("ENOSPC after %d bytes with %d bytes still in the balloon", written, st.BalloonBytes)
	}
	if written < quota*9/10 {
		t.Fatalf("only %d of %d bytes written", written, quota)
	}
}

func TestCheckAndRepairCorruption(t *testing.T) {
	roottest.Require(t, "debugfs")
	path, dir := newImage(t, 256*mib, 64*mib)
	m := mountImage(t, path, dir)
	writeFiles(t, filepath.Join(m.Dir, "data"), 3, 64*kib)
	ctx := context.Background()
	if err := m.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("debugfs", "-w", "-R", "sif /data/1 block[0] 0x12345678", path).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v %s", err, out)
	}
	res, err := Check(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if res.Clean() || !res.Uncorrected() || res.Status() != "errors" {
		t.Fatalf("check of a corrupt image: %+v", res)
	}
	res, err = Repair(ctx, path, RepairYes)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Corrected() || res.Status() != "repaired" {
		t.Fatalf("repair: %+v", res)
	}
	requireClean(t, path)
	// Repairing a clean image changes nothing.
	if res, err = Repair(ctx, path, RepairPreen); err != nil || !res.Clean() {
		t.Fatalf("second repair: %+v %v", res, err)
	}
}

func TestOfflineOperationsRefuseMountedImage(t *testing.T) {
	path, dir := newImage(t, 128*mib, 64*mib)
	mountImage(t, path, dir)
	ctx := context.Background()
	if _, err := Check(ctx, path); !errors.Is(err, ErrInUse) {
		t.Errorf("Check of a mounted image: %v", err)
	}
	if _, err := Repair(ctx, path, RepairYes); !errors.Is(err, ErrInUse) {
		t.Errorf("Repair of a mounted image: %v", err)
	}
	if err := Shrink(ctx, path, 64*mib, true); !errors.Is(err, ErrInUse) {
		t.Errorf("Shrink of a mounted image: %v", err)
	}
}

func TestFindMountAfterRestart(t *testing.T) {
	path, dir := newImage(t, 128*mib, 64*mib)
	m := mountImage(t, path, dir)
	// A restarted process knows only the image path.
	found, err := FindMount(filepath.Join(dir, ".", "img"))
	if err != nil {
		t.Fatal(err)
	}
	if found.Device != m.Device || found.Dir != m.Dir || found.Image != m.Image {
		t.Fatalf("found %+v, want %+v", found, m)
	}
	// Mounting it a second time, anywhere, would corrupt it.
	other := filepath.Join(dir, "other")
	os.Mkdir(other, 0o755)
	if _, err := Mount(context.Background(), path, other, MountOptions{}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second mount: %v, want ErrInUse", err)
	}
	st, err := Stat(context.Background(), path)
	if err != nil || !st.Mounted || st.Device != m.Device {
		t.Fatalf("Stat of a mounted image: %+v %v", st, err)
	}
	if err := m.Unmount(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := FindMount(path); !errors.Is(err, ErrNotMounted) {
		t.Fatalf("FindMount after unmount: %v", err)
	}
	if devs, _ := FindLoops(path); len(devs) != 0 {
		t.Fatalf("loop devices left after unmount: %v", devs)
	}
}

// TestRemoveTemporariesReleasesStaleMounts plays a daemon killed while it
// placed a new image's balloon: the half-made image is attached and mounted
// on a private directory no live process owns. RemoveTemporaries unmounts
// it, detaches it and deletes it with its directory; an image mounted by
// someone else, or a private mount of this process, stays.
func TestRemoveTemporariesReleasesStaleMounts(t *testing.T) {
	path, dir := newImage(t, 128*mib, 64*mib)
	ctx := context.Background()
	tmp := path + ".0123abcd" + tempSuffix
	if err := os.Rename(path, tmp); err != nil {
		t.Fatal(err)
	}
	stale, err := os.MkdirTemp("", "snug-create-") // made by a process now gone
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(stale) })
	m, err := Mount(ctx, tmp, stale, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmount(ctx) })

	// A temporary attached elsewhere (not a private mount) is left alone.
	other, _ := newImage(t, 128*mib, 64*mib)
	busy := filepath.Join(dir, "busy"+tempSuffix)
	if err := os.Rename(other, busy); err != nil {
		t.Fatal(err)
	}
	mountImage(t, busy, dir)

	removed, err := RemoveTemporaries(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{tmp}) {
		t.Errorf("removed %v, want only %s", removed, tmp)
	}
	if devs, _ := FindLoops(tmp); len(devs) != 0 {
		t.Errorf("loop devices left on the removed temporary: %v", devs)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("private mount directory left: %v", err)
	}
	if _, err := FindMount(busy); err != nil {
		t.Errorf("an image mounted by someone else was released: %v", err)
	}

	// Empty private directories a killed process left are swept once old;
	// a fresh one may be a live process's, about to be mounted on.
	old, _ := os.MkdirTemp("", "snug-mnt-")
	fresh, _ := os.MkdirTemp("", "snug-mnt-")
	t.Cleanup(func() { os.Remove(old); os.Remove(fresh) })
	os.Chtimes(old, time.Now().Add(-2*privateDirAge), time.Now().Add(-2*privateDirAge))
	SweepPrivateDirs()
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("old empty private directory kept: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh private directory swept: %v", err)
	}

	// This process's private mount is in no mount table: nothing for
	// ReleaseStale to take.
	own, _ := newImage(t, 128*mib, 64*mib)
	err = WithMount(ctx, own, MountOptions{}, func(m *Mounted) error {
		if _, err := FindMount(own); !errors.Is(err, ErrNotMounted) {
			return fmt.Errorf("a private mount is in the mount table: %v", err)
		}
		if released, err := ReleaseStale(ctx, own); released || err != nil {
			return fmt.Errorf("ReleaseStale took a live private mount: %v, %v", released, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPrivateMountsStayOutOfNewNamespaces: a process that makes a new mount
// namespace while snug holds a private mount (runc, starting a container
// while snug creates an image) copies the host's mounts. A private mount
// must not be among them, or the copy keeps the image attached after its
// unmount: Create then failed with "still attached after its unmount"
// under a churn of container starts (TestLoad, in CI).
func TestPrivateMountsStayOutOfNewNamespaces(t *testing.T) {
	roottest.Require(t, "unshare")
	path, _ := newImage(t, 128*mib, 64*mib)
	ctx := context.Background()
	var holder *exec.Cmd
	err := WithMount(ctx, path, MountOptions{}, func(m *Mounted) error {
		if err := os.WriteFile(filepath.Join(m.Dir, "file"), []byte("data"), 0o600); err != nil {
			return err
		}
		// A new mount namespace that lives on after the unmount, as a
		// container's does until its pivot_root.
		holder = exec.Command("unshare", "--mount", "--propagation", "unchanged", "sleep", "60")
		if err := holder.Start(); err != nil {
			return err
		}
		// The namespace exists once unshare has run sleep.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", holder.Process.Pid)); strings.HasSuffix(exe, "/sleep") {
				return nil
			}
		}
		return errors.New("unshare did not start sleep")
	})
	if holder != nil && holder.Process != nil {
		t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	}
	if err != nil {
		t.Fatalf("private mount while a new namespace was made: %v", err)
	}
	if devs, _ := FindLoops(path); len(devs) != 0 {
		t.Fatalf("image still attached to %v after its private mount", devs)
	}
	// The data written on the private mount is in the image.
	err = WithMount(ctx, path, MountOptions{ReadOnly: true}, func(m *Mounted) error {
		got, err := os.ReadFile(filepath.Join(m.Dir, "file"))
		if err == nil && string(got) != "data" {
			err = fmt.Errorf("read %q", got)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestOverlayKeepsAnUnmountedImageAlive: an overlay keeps private clones of
// its layers' mounts, so unmounting an image under a container's rootfs
// succeeds while its filesystem lives on. UnmountBelow must then say busy
// (and the caller keep the file), and Mount must adopt the live filesystem
// rather than refuse the image or attach a second ext4 instance to it.
func TestOverlayKeepsAnUnmountedImageAlive(t *testing.T) {
	path, dir := newImage(t, 128*mib, 64*mib)
	ctx := context.Background()
	m := mountImage(t, path, dir)
	rootfs, _ := overlayOn(t, m)

	if err := UnmountBelow(ctx, dir); !errors.Is(err, ErrBusy) {
		t.Fatalf("UnmountBelow under a live overlay: %v, want ErrBusy", err)
	}
	if _, err := FindMount(path); !errors.Is(err, ErrNotMounted) {
		t.Fatalf("the image mount is still listed: %v", err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "written"), []byte("alive"), 0o644); err != nil {
		t.Fatalf("the container's rootfs stopped working: %v", err)
	}

	again := filepath.Join(dir, "again")
	os.Mkdir(again, 0o755)
	adopted, err := Mount(ctx, path, again, MountOptions{DirectIO: true})
	if err != nil {
		t.Fatalf("Mount of a live unlisted image: %v", err)
	}
	t.Cleanup(func() { adopted.Unmount(ctx) })
	if adopted.Device != m.Device {
		t.Errorf("adopted on %s, the filesystem lives on %s", adopted.Device, m.Device)
	}
	if b, err := os.ReadFile(filepath.Join(again, "upper", "written")); err != nil || string(b) != "alive" {
		t.Errorf("adopted mount shows %q, %v: not the live filesystem", b, err)
	}

	// Once the overlay is gone, the image unmounts and detaches.
	if err := unix.Unmount(rootfs, 0); err != nil {
		t.Fatal(err)
	}
	if err := adopted.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	if devs, _ := FindLoops(path); len(devs) != 0 {
		t.Errorf("still attached after the last user went: %v", devs)
	}
	requireClean(t, path)

	// A device attached without a filesystem on it is not adopted.
	loop, err := Attach(ctx, path, AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer loop.Close()
	if _, err := Mount(ctx, path, again, MountOptions{}); !errors.Is(err, ErrInUse) {
		t.Errorf("Mount of an image attached with no filesystem: %v, want ErrInUse", err)
	}
}

func TestShrink(t *testing.T) {
	path, dir := newImage(t, 1*gib, 128*mib)
	ctx := context.Background()
	m := mountImage(t, path, dir)
	writeFiles(t, filepath.Join(m.Dir, "data"), 10, 4*mib)
	if _, err := m.Grow(ctx, 900*mib); err != nil {
		t.Fatal(err)
	}
	// Put data at the far end so resize2fs must move it.
	far := filepath.Join(m.Dir, "far")
	writeFiles(t, far, 1, 0)
	if err := m.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	if err := Shrink(ctx, path, 16*mib, true); !errors.Is(err, ErrQuotaTooSmall) {
		t.Fatalf("shrink below the minimum: %v", err)
	}
	if err := Shrink(ctx, path, 40*mib, true); !errors.Is(err, ErrQuotaTooSmall) {
		t.Fatalf("shrink below the data: %v", err)
	}
	requireClean(t, path)
	for range 2 {
		if err := Shrink(ctx, path, 256*mib, true); err != nil {
			t.Fatal(err)
		}
	}
	st, err := Stat(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if st.QuotaBytes != 256*mib || st.WindowBytes > 256*mib {
		t.Fatalf("after shrink: %+v", st)
	}
	if fi, _ := os.Stat(path); fi.Size() != 256*mib {
		t.Fatalf("file size %d after shrink", fi.Size())
	}
	requireClean(t, path)
	assertOnly(t, dir, "img", "mnt")
	m = mountImage(t, path, dir)
	for i := range 10 {
		if fi, err := os.Stat(filepath.Join(m.Dir, "data", fmt.Sprint(i))); err != nil || fi.Size() != 4*mib {
			t.Fatalf("data lost by shrink: %v", err)
		}
	}
}

// TestSuperblockMatchesDumpe2fs compares the parser with e2fsprogs' own.
func TestSuperblockMatchesDumpe2fs(t *testing.T) {
	path, _ := newImage(t, 256*mib, 64*mib)
	sb, err := ReadSuperblock(path)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("dumpe2fs", "-h", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		fmt.Sprintf("Block count:              %d\n", sb.Blocks),
		fmt.Sprintf("Free blocks:              %d\n", sb.FreeBlocks),
		fmt.Sprintf("Inode count:              %d\n", sb.Inodes),
		fmt.Sprintf("Filesystem UUID:          %s\n", sb.UUIDString()),
	} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("dumpe2fs does not say %q", want)
		}
	}
}

// BenchmarkBackingFiles is the scan of attached loop devices every Remove
// makes (and a Mount of an image not known to be new):
// go test -run XXX -bench BackingFiles ./imagefs (the figure in
// backingFiles' doc; it grows with the host's loop devices).
func BenchmarkBackingFiles(b *testing.B) {
	for range b.N {
		if _, err := backingFiles(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPlaceADetachedMount: an image mounted detached ahead of need (the
// pool's), its file renamed meanwhile, is placed on a directory as an
// ordinary mount that FindMount finds under the file's new name; a Place
// that fails leaves it detached, and its Unmount leaves no loop device.
func TestPlaceADetachedMount(t *testing.T) {
	path, dir := newImage(t, 128*mib, 64*mib)
	ctx := context.Background()
	m, err := MountDetached(ctx, path, MountOptions{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmount(ctx) })
	if !m.Detached() {
		t.Fatal("a detached mount does not say so")
	}
	if _, err := FindMount(path); !errors.Is(err, ErrNotMounted) {
		t.Fatalf("a detached mount is in the mount table: %v", err)
	}
	moved := filepath.Join(dir, "moved")
	if err := os.Rename(path, moved); err != nil {
		t.Fatal(err)
	}
	if err := m.Place(moved, filepath.Join(dir, "missing")); err == nil || !m.Detached() {
		t.Fatalf("Place on a missing directory: %v, detached %v", err, m.Detached())
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := m.Place(moved, mnt); err != nil {
		t.Fatal(err)
	}
	if m.Detached() || m.Dir != mnt || m.Image != moved {
		t.Fatalf("placed: detached %v, dir %s, image %s", m.Detached(), m.Dir, m.Image)
	}
	found, err := FindMount(moved)
	if err != nil || found.Dir != mnt || found.Device != m.Device {
		t.Fatalf("FindMount after Place: %+v, %v", found, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "file"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	if devs, _ := FindLoops(moved); len(devs) != 0 {
		t.Fatalf("image still attached to %v after its unmount", devs)
	}

	// One that is never placed goes with its Unmount.
	d, err := MountDetached(ctx, moved, MountOptions{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	if devs, _ := FindLoops(moved); len(devs) != 0 {
		t.Fatalf("image still attached to %v after a detached mount's unmount", devs)
	}
}

// TestFindLoopsFindsAttached: a file attached to a loop device is found
// by the scan of attached devices (FindLoops, loopsBelow), and no longer
// once the device is gone.
func TestFindLoopsFindsAttached(t *testing.T) {
	roottest.Require(t)
	dir := roottest.TempDir(t)
	path := filepath.Join(dir, "file.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	loop, err := Attach(context.Background(), path, AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	devs, err := FindLoops(path)
	below, berr := loopsBelow(dir)
	if err != nil || berr != nil || !slices.Equal(devs, []string{loop.Device}) || !slices.Equal(below, []string{loop.Device}) {
		t.Errorf("attached to %s: FindLoops %v (%v), loopsBelow %v (%v)", loop.Device, devs, err, below, berr)
	}
	loop.Close() // autoclear: the device goes with its last user
	if err := waitGone(context.Background(), func() (bool, error) {
		devs, err := FindLoops(path)
		return len(devs) == 0, err
	}); err != nil {
		t.Errorf("%s still found after its close: %v", loop.Device, err)
	}
}
