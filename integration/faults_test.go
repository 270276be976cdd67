package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/internal/roottest"
)

// hostTools are the e2fsprogs tools snug runs; the fault test serves them
// from a directory of its own (policy e2fsprogs_dir) to take them away or
// make them fail.
var hostTools = []string{"mkfs.ext4", "e2fsck", "resize2fs", "debugfs", "tune2fs"}

// TestHostFaults breaks the host under a running snug, one fault at a time,
// on a state directory of its own (a small ext4 with few inodes): the host
// filesystem full, out of inodes, mkfs.ext4 failing and missing (and
// tune2fs, which Prepare does not need), e2fsck missing and failing, and an image file deleted under a mounted snapshot.
// Each must fail only the operation that meets it, with an error that says
// what is wrong, leave nothing half made (snapshots, directories, image
// files, loop devices as before), and work again once the fault is gone,
// without a restart.
func TestHostFaults(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	dir := roottest.TempDir(t)
	hostFS(t, filepath.Join(dir, "host.img"), filepath.Join(dir, "state"))
	tools := filepath.Join(dir, "tools")
	setTools(t, tools, nil)
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	d := startDaemon(t, dir, fmt.Sprintf("e2fsprogs_dir = %q\nmetrics_address = %q\n[image]\nquota = \"1GiB\"\n", tools, metrics))
	// Faults the kernel cannot be made to produce are injected while this
	// file names them (internal/failpoint.Fault).
	faults := filepath.Join(dir, "faults")
	d.Env = []string{"SNUG_FAULT_FILE=" + faults}
	d.Restart(syscall.SIGTERM)
	sn := d.Snapshotter(t)
	ctx := context.Background()

	seedBase(t, sn)
	w := startWriter(t, prepareOnBase(t, sn, "work"))
	writeThrough(t, prepareOnBase(t, sn, "idle"), "idle-file", "idle")

	// A quota the pool has no ready image for: Prepare makes it on the spot.
	own := snapshots.WithLabels(map[string]string{"containerd.io/snapshot/max-size": fmt.Sprint(2 << 30)})
	prepare := func(key string) error {
		_, err := sn.Prepare(ctx, key, "base", own)
		return err
	}
	want := walkNames(t, sn)
	// fails runs one fault: op must fail saying msg, and leave everything
	// as it was.
	fails := func(fault, msg string, op func() error) {
		t.Helper()
		err := op()
		if err == nil {
			t.Fatalf("%s: the operation succeeded", fault)
		}
		if !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: error %q does not say %q", fault, err, msg)
		}
		t.Logf("%s: %v", fault, err)
		if got := walkNames(t, sn); got != want {
			t.Errorf("%s: snapshots %s, want %s", fault, got, want)
		}
		requireNothingHalfMade(t, d, fault)
	}
	recovers := func(fault string) {
		t.Helper()
		key := "after-" + strings.ReplaceAll(fault, " ", "-")
		if err := prepare(key); err != nil {
			t.Fatalf("%s gone: Prepare: %v", fault, err)
		}
		if err := sn.Remove(ctx, key); err != nil {
			t.Fatal(err)
		}
	}

	// The host filesystem full.
	fill := fillSpace(t, filepath.Join(dir, "state", "fill"))
	fails("host full", "host filesystem is full", func() error { return prepare("full") })
	fails("host full", "host filesystem is full", func() error { return sn.Commit(ctx, "layer", "idle") })
	// A container writing new data while the host is full: the data has
	// nowhere to go on the host, so its write fails (ENOSPC, at fsync),
	// but the image stays consistent and in service, with no incident, and
	// the same write works once there is room (the image is checked with
	// e2fsck -fn below).
	big := filepath.Join(filepath.Dir(w.file), "new-data")
	writeNew := func() (string, error) {
		out, err := exec.Command("dd", "if=/dev/urandom", "of="+big, "bs=1M", "count=16", "conv=fsync").CombinedOutput()
		return string(out), err
	}
	if out, err := writeNew(); err == nil || !strings.Contains(out, "No space left on device") {
		t.Errorf("a container's write on a full host: %v: %s; want No space left on device", err, out)
	} else {
		t.Logf("container write on a full host: %s", strings.SplitN(out, "\n", 2)[0])
	}
	if st := imageOf(t, d, "work"); st.Problem != "" || !st.Mounted {
		t.Errorf("after a failed write on a full host: problem %q, mounted %v", st.Problem, st.Mounted)
	}
	if out, _ := d.Snug(ctx, "incidents"); !strings.Contains(out, "no incidents") {
		t.Errorf("a failed write on a full host opened an incident: %s", out)
	}
	w.requireWriting(t)
	os.Remove(fill)
	recovers("host full")
	if out, err := writeNew(); err != nil {
		t.Errorf("room again: the container's write: %v: %s", err, out)
	}

	// Out of inodes.
	inodes := fillInodes(t, filepath.Join(dir, "state", "inodes"))
	fails("no inodes", "no space left on device", func() error { return prepare("no-inodes") })
	os.RemoveAll(inodes)
	recovers("no inodes")

	// Out of loop devices: LOOP_CTL_GET_FREE fails as when the kernel can
	// add no device (injected: this kernel makes them on demand).
	if err := os.WriteFile(faults, []byte("loop-exhausted\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fails("no loop device", "no free loop device", func() error { return prepare("no-loop") })
	// From the pool: its premounted images hold their loop devices, so
	// Prepares take those until none is left, then fail like the others.
	// (The faults above stopped its refills: a take restarts them.)
	os.Remove(faults)
	if _, err := sn.Prepare(ctx, "refill", "base"); err != nil {
		t.Fatal(err)
	}
	if err := sn.Remove(ctx, "refill"); err != nil {
		t.Fatal(err)
	}
	// The pool's own count: an image file in pool/mounted may still be
	// being attached and mounted, and the fault below would fail that.
	premounted := func() int { return int(metricValue(t, metrics, "snug_pool_mounted_images")) }
	for end := time.Now().Add(20 * time.Second); premounted() < 2 && time.Now().Before(end); {
		time.Sleep(50 * time.Millisecond)
	}
	if n := premounted(); n < 2 {
		t.Fatalf("the pool holds %d premounted images, want pool.min 2", n)
	}
	if err := os.WriteFile(faults, []byte("loop-exhausted\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		key := fmt.Sprintf("no-loop-pool-%d", i)
		_, err := sn.Prepare(ctx, key, "base")
		if err != nil {
			if i == 0 {
				t.Errorf("no loop device: a Prepare from the premounted pool failed: %v", err)
			}
			t.Logf("no loop device: the pool served %d Prepares", i)
			fails("no loop device", "no free loop device", func() error { return err })
			break
		}
		if err := sn.Remove(ctx, key); err != nil {
			t.Fatal(err)
		}
		if i == 100 {
			t.Fatal("no loop device: Prepares from the pool never ran out of loop devices")
		}
	}
	os.Remove(faults)
	recovers("no loop device")

	// mkfs.ext4 failing, then missing, where a template must be made: a
	// quota no image had yet.
	fresh := snapshots.WithLabels(map[string]string{"containerd.io/snapshot/max-size": fmt.Sprint(3 << 30)})
	prepareFresh := func(key string) error {
		_, err := sn.Prepare(ctx, key, "base", fresh)
		return err
	}
	setTools(t, tools, map[string]string{"mkfs.ext4": "echo 'mkfs.ext4: simulated failure' >&2; exit 1"})
	fails("mkfs failing", "simulated failure", func() error { return prepareFresh("mkfs-fails") })
	os.Remove(filepath.Join(tools, "mkfs.ext4"))
	fails("mkfs missing", "mkfs.ext4: e2fsprogs tool not found", func() error { return prepareFresh("no-mkfs") })
	setTools(t, tools, nil)
	recovers("mkfs missing")

	// tune2fs failing, then missing: Prepare does not need it. A copy of
	// a template gets its UUID written into its superblocks in place;
	// tune2fs -U is only the fallback for layouts snug does not make
	// (imagefs.TestSetUUIDInSuperblocks).
	setTools(t, tools, map[string]string{"tune2fs": "echo 'tune2fs: simulated failure' >&2; exit 1"})
	recovers("tune2fs failing")
	os.Remove(filepath.Join(tools, "tune2fs"))
	recovers("tune2fs missing")
	setTools(t, tools, nil)

	// e2fsck missing, then failing: the check says so, the image stays in
	// service.
	check := func() error {
		out, err := d.Snug(ctx, "check", "work")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	os.Remove(filepath.Join(tools, "e2fsck"))
	fails("e2fsck missing", "e2fsck: e2fsprogs tool not found", check)
	setTools(t, tools, map[string]string{"e2fsck": "echo 'e2fsck: simulated failure' >&2; exit 8"})
	fails("e2fsck failing", "simulated failure", check)
	setTools(t, tools, nil)
	if err := check(); err != nil {
		t.Fatalf("e2fsck back: %v", err)
	}
	w.requireWriting(t)

	// An image file deleted under a mounted snapshot: the filesystem lives
	// on (the loop device holds the file) until the snapshot goes, but
	// status says the file is gone, and the snapshot is removed cleanly.
	idle := imageOf(t, d, "idle")
	if err := os.Remove(idle.Path); err != nil {
		t.Fatal(err)
	}
	if p := imageOf(t, d, "idle").Problem; !strings.Contains(p, "deleted") {
		t.Errorf("status of a snapshot whose image was deleted: problem %q", p)
	}
	d.Restart(syscall.SIGTERM)
	sn = d.Snapshotter(t)
	if p := imageOf(t, d, "idle").Problem; !strings.Contains(p, "deleted") {
		t.Errorf("after a restart, status of a snapshot whose image was deleted: problem %q", p)
	}
	if _, err := sn.Mounts(ctx, "idle"); err == nil || !strings.Contains(err.Error(), "deleted") {
		t.Errorf("Mounts of a snapshot whose image was deleted: %v", err)
	}
	if err := sn.Remove(ctx, "idle"); err != nil {
		t.Fatal(err)
	}
	want = walkNames(t, sn)
	requireNothingHalfMade(t, d, "image deleted")
	w.requireWriting(t)
}

// imageOf is the status of the daemon's snapshot name.
func imageOf(t *testing.T, d *daemon, name string) api.ImageStatus {
	t.Helper()
	for _, im := range d.Status(t) {
		if im.Snapshot == name {
			return im
		}
	}
	t.Fatalf("no snapshot %s in status", name)
	return api.ImageStatus{}
}

// hostFS mounts a fresh 512 MiB ext4 with 512 inodes, made in the file
// image, on dir.
func hostFS(t *testing.T, image, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-N", "512", image, "512M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", image, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
}

// setTools fills dir with links to the real e2fsprogs tools, and with a
// shell script in place of each tool named in fake.
func setTools(t *testing.T, dir string, fake map[string]string) {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	for _, tool := range hostTools {
		p := filepath.Join(dir, tool)
		os.Remove(p)
		if script, ok := fake[tool]; ok {
			if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		real, err := exec.LookPath(tool)
		if err != nil {
			real, err = exec.LookPath("/usr/sbin/" + tool)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(real, p); err != nil {
			t.Fatal(err)
		}
	}
}

// fillSpace takes all free space of path's filesystem: it allocates in
// chunks, halving a chunk the filesystem refuses, down to one block.
func fillSpace(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var off int64
	for chunk := int64(64 << 20); chunk >= 4<<10; {
		err := unix.Fallocate(int(f.Fd()), 0, off, chunk)
		switch {
		case err == nil:
			off += chunk
		case errors.Is(err, unix.ENOSPC):
			chunk /= 2
		default:
			t.Fatal(err)
		}
	}
	return path
}

// fillInodes creates empty files in dir until the filesystem has no inode
// left.
func fillInodes(t *testing.T, dir string) string {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		f, err := os.Create(filepath.Join(dir, fmt.Sprint(i)))
		if err != nil {
			if !strings.Contains(err.Error(), "no space left") {
				t.Fatal(err)
			}
			return dir
		}
		f.Close()
	}
}

// walkNames lists the snapshots, sorted, with their kinds.
func walkNames(t *testing.T, sn snapshots.Snapshotter) string {
	t.Helper()
	got := map[string]snapshots.Kind{}
	if err := sn.Walk(context.Background(), func(_ context.Context, info snapshots.Info) error {
		got[info.Name] = info.Kind
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(got)
}

// requireNothingHalfMade fails if the daemon's state holds a snapshot
// directory being built, a half-made image file, or a loop device on an
// image that is not mounted.
func requireNothingHalfMade(t *testing.T, d *daemon, fault string) {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Join(d.Root, "snapshots"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "new-") {
			t.Errorf("%s: snapshot directory %s left", fault, e.Name())
		}
	}
	// The pool may be making an image in the background: give it time.
	var temps []string
	if !settles(func() bool { temps = halfMadeImages(d.Root); return len(temps) == 0 }) {
		t.Errorf("%s: half-made images left: %v", fault, temps)
	}
	// A snapshot removed a moment ago may still be being deleted in the
	// background (its image unmounted, its loop device detaching).
	var images, n int
	if !settles(func() bool { images, n = len(d.Status(t)), len(loopsUnder(d.Root+"/snapshots/")); return n == images }) {
		t.Errorf("%s: %d loop devices on snapshot images, %d images", fault, n, images)
	}
}

// settles polls cond every 50 ms for up to 15 s, for what the daemon
// finishes in the background, and reports whether it came true.
func settles(cond func() bool) bool {
	for end := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}
