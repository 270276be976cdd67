package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// crashCase is one kill -9 of the daemon at a failpoint, and what must be
// true after it restarts.
type crashCase struct {
	op    string // what the armed daemon was doing
	point string // the failpoint it dies at
	// prep runs on the daemon before it restarts with the point armed.
	prep func(ctx context.Context, t *testing.T, d *daemon, sn snapshots.Snapshotter)
	// stopped runs while the daemon is down, before the armed start.
	stopped func(t *testing.T, d *daemon)
	// hit makes the armed daemon reach the point; nil means its start-up
	// does.
	hit func(ctx context.Context, t *testing.T, d *daemon, sn snapshots.Snapshotter)
	// early: the start-up may reach the point before hit runs.
	early bool
	// want lists the snapshot names after the restart (kind per name).
	want map[string]snapshots.Kind
	// after, if set, checks more once the daemon is back.
	after func(t *testing.T, d *daemon)
}

// crashPolicy makes grows frequent and images small, so that a grow and a
// reclaim are quick to reach.
const crashPolicy = `
[image]
quota = "1GiB"
[window]
initial = "32MiB"
headroom = "16MiB"
headroom_ratio = 0.0
check_interval = "20ms"
`

// TestCrashMatrix kills snug serve with SIGKILL inside each step that
// changes state (internal/failpoint): Prepare, View, Commit, Remove,
// Cleanup, the pool's image making, grow, reclaim and start-up reconcile.
// A process keeps writing to a mounted active snapshot all along, standing
// for a running container. After the restart it checks: containerd's view
// (Walk) is as expected, each active snapshot and view mounts and reads
// (actives take a write), every image is mounted exactly once and checks
// clean (`snug check`, e2fsck -fn of the frozen image), no mount, loop
// device, image file or directory is left over, and the writer kept
// writing through it all. docs/crash.md reports the matrix.
func TestCrashMatrix(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	base := map[string]snapshots.Kind{"base": snapshots.KindCommitted, "work": snapshots.KindActive, "running": snapshots.KindActive}
	with := func(extra map[string]snapshots.Kind, drop ...string) map[string]snapshots.Kind {
		m := maps.Clone(base)
		maps.Copy(m, extra)
		for _, k := range drop {
			delete(m, k)
		}
		return m
	}
	snapOp := func(op func(ctx context.Context, sn snapshots.Snapshotter) error) func(context.Context, *testing.T, *daemon, snapshots.Snapshotter) {
		return func(ctx context.Context, t *testing.T, _ *daemon, sn snapshots.Snapshotter) {
			if err := op(ctx, sn); err == nil {
				t.Error("the operation succeeded: the failpoint was not reached")
			}
		}
	}
	prepare := snapOp(func(ctx context.Context, sn snapshots.Snapshotter) error {
		_, err := sn.Prepare(ctx, "new", "base")
		return err
	})
	// prepareFromPool is prepare once the pool holds a premounted image,
	// which the Prepare takes with its detached mount.
	prepareFromPool := func(ctx context.Context, t *testing.T, d *daemon, sn snapshots.Snapshotter) {
		for end := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if m, _ := filepath.Glob(filepath.Join(d.Root, "pool", "mounted", "*.img")); len(m) > 0 {
				break
			}
			if time.Now().After(end) {
				t.Fatal("the pool premounted no image in 15 s")
			}
		}
		prepare(ctx, t, d, sn)
	}
	view := snapOp(func(ctx context.Context, sn snapshots.Snapshotter) error {
		_, err := sn.View(ctx, "view", "base")
		return err
	})
	commit := snapOp(func(ctx context.Context, sn snapshots.Snapshotter) error {
		return sn.Commit(ctx, "layer2", "work")
	})
	// applyLayer plays containerd's unpacker and snug's differ up to the
	// Commit: an extraction snapshot on base, its layer written from a tar
	// where the differ writes it.
	applyLayer := func(ctx context.Context, t *testing.T, d *daemon, sn snapshots.Snapshotter) {
		mounts, err := sn.Prepare(ctx, "extract", "base", snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "layer2"}))
		if err != nil {
			t.Fatal(err)
		}
		var upper string
		for _, o := range mounts[0].Options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				upper = v
			}
		}
		var tarball bytes.Buffer
		tw := tar.NewWriter(&tarball)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "layer2-file", Mode: 0o644, Size: 6})
		tw.Write([]byte("layer2"))
		tw.Close()
		if _, err := imagefs.LayerFromTar(ctx, &tarball, filepath.Join(filepath.Dir(filepath.Dir(upper)), "applied.img")); err != nil {
			t.Fatal(err)
		}
	}
	// unpackFiles prepares a layer's unpack and writes a file into its
	// upper dir, as containerd's own applier would without snug's differ.
	unpackFiles := func(ctx context.Context, t *testing.T, d *daemon, sn snapshots.Snapshotter) {
		mounts, err := sn.Prepare(ctx, "extract", "base", snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "layer2"}))
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range mounts[0].Options {
			if upper, ok := strings.CutPrefix(o, "upperdir="); ok {
				if err := os.WriteFile(filepath.Join(upper, "layer2-file"), []byte("layer2"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	commitApplied := snapOp(func(ctx context.Context, sn snapshots.Snapshotter) error {
		return sn.Commit(ctx, "layer2", "extract")
	})
	// layer2Reads checks the committed layer2 shows the applied layer.
	layer2Reads := func(t *testing.T, d *daemon) {
		sn := d.Snapshotter(t)
		mounts, err := sn.View(context.Background(), "check-layer2", "layer2")
		if err != nil {
			t.Fatal(err)
		}
		if got := readThrough(t, mounts, "layer2-file"); got != "layer2" {
			t.Errorf("layer2-file = %q", got)
		}
	}
	remove := snapOp(func(ctx context.Context, sn snapshots.Snapshotter) error {
		return sn.Remove(ctx, "work")
	})
	// removeInBackground removes work: the removal is recorded and Remove
	// returns, the image is unmounted and deleted after it (removing.go),
	// where the daemon dies.
	removeInBackground := func(ctx context.Context, t *testing.T, _ *daemon, sn snapshots.Snapshotter) {
		sn.Remove(ctx, "work") // answered, or not if the kill came first
	}
	// cleanup removes a snapshot while its mount is in use (the record
	// goes, the image stays: the background deletion gives up), then runs
	// Cleanup once it is free.
	cleanup := func(ctx context.Context, t *testing.T, d *daemon, sn snapshots.Snapshotter) {
		mounts, err := sn.Prepare(ctx, "gone", "base")
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := mount.All(mounts, dir); err != nil {
			t.Fatal(err)
		}
		if err := sn.Remove(ctx, "gone"); err != nil {
			t.Fatal(err)
		}
		for end := time.Now().Add(20 * time.Second); !strings.Contains(d.Log(), "its image is deleted later"); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("the background deletion of the busy image did not give up:\n%s", d.Log())
			}
		}
		if err := mount.UnmountAll(dir, 0); err != nil {
			t.Fatal(err)
		}
		if err := sn.(snapshots.Cleaner).Cleanup(ctx); err == nil {
			t.Error("Cleanup succeeded: the failpoint was not reached")
		}
	}
	// grow writes into work until the daemon dies growing a window (the
	// writer's, maybe, which it grows too).
	grow := func(ctx context.Context, t *testing.T, d *daemon, sn snapshots.Snapshotter) {
		mounts, err := sn.Mounts(ctx, "work")
		if err != nil {
			select {
			case <-d.done: // died growing the writer's window first
				return
			case <-time.After(10 * time.Second):
				t.Fatal(err)
			}
		}
		dir := t.TempDir()
		if err := mount.All(mounts, dir); err != nil {
			t.Fatal(err)
		}
		defer mount.UnmountAll(dir, 0)
		f, err := os.Create(filepath.Join(dir, "grow"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		chunk := make([]byte, 1<<20)
		for i := 0; i < 512; i++ {
			select {
			case <-d.done:
				return
			default:
			}
			if _, err := f.Write(chunk); err != nil {
				t.Logf("write %d MiB in: %v", i, err)
				return
			}
			f.Sync()
		}
	}
	reclaim := func(ctx context.Context, t *testing.T, d *daemon, _ snapshots.Snapshotter) {
		if out, err := d.Snug(ctx, "reclaim", "work"); err == nil {
			t.Errorf("snug reclaim succeeded: the failpoint was not reached\n%s", out)
		}
	}
	// resize lowers work's quota from the policy's 1 GiB to 64 MiB after
	// its window grew to 200 MiB (a file written and deleted), so the
	// balloon must take free space in the window; after the restart the
	// quota is one of the two, and what the balloon holds keeps it.
	growWork := func(ctx context.Context, t *testing.T, _ *daemon, sn snapshots.Snapshotter) {
		mounts, err := sn.Mounts(ctx, "work")
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := mount.All(mounts, dir); err != nil {
			t.Fatal(err)
		}
		defer mount.UnmountAll(dir, 0)
		f, err := os.Create(filepath.Join(dir, "big"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close() // before the unmount, even on a failure
		chunk := make([]byte, 1<<20)
		// At disk speed the 16 MiB headroom keeps ahead, but on a loaded
		// CI machine a grow can land after a write found the window full:
		// this is a set-up step (the burst test measures ENOSPC), so a
		// write that meets ENOSPC waits for the grow and is tried again.
		retries := 0
		for i := 0; i < 200; {
			if _, err := f.Write(chunk); err != nil {
				if errors.Is(err, unix.ENOSPC) && retries < 50 {
					retries++
					time.Sleep(20 * time.Millisecond)
					continue
				}
				t.Fatalf("write %d MiB in (%d retries): %v", i, retries, err)
			}
			f.Sync()
			i++
		}
		f.Close()
		if err := os.Remove(filepath.Join(dir, "big")); err != nil {
			t.Fatal(err)
		}
		unix.Sync()
	}
	resize := func(ctx context.Context, t *testing.T, d *daemon, _ snapshots.Snapshotter) {
		if out, err := d.Snug(ctx, "resize", "--quota", "64MiB", "work"); err == nil {
			t.Errorf("snug resize succeeded: the failpoint was not reached\n%s", out)
		}
	}
	quotaIs := func(want int64) func(t *testing.T, d *daemon) {
		return func(t *testing.T, d *daemon) {
			for _, im := range d.Status(t) {
				if im.Snapshot == "work" && (im.QuotaBytes != want || im.UsedBytes+im.FreeBytes > want) {
					t.Errorf("work after the restart: quota %d MiB, used %d + free %d MiB; want the quota %d MiB and no more room",
						im.QuotaBytes>>20, im.UsedBytes>>20, im.FreeBytes>>20, want>>20)
				}
			}
		}
	}
	cases := []crashCase{
		{op: "prepare", point: "prepare-built", hit: prepare, want: with(nil)},
		{op: "prepare", point: "prepare-renamed", hit: prepare, want: with(nil)},
		{op: "prepare", point: "prepare-recorded", hit: prepare, want: with(map[string]snapshots.Kind{"new": snapshots.KindActive})},
		{op: "prepare-premounted", point: "prepare-built", hit: prepareFromPool, want: with(nil)},
		{op: "prepare-premounted", point: "prepare-recorded", hit: prepareFromPool, want: with(map[string]snapshots.Kind{"new": snapshots.KindActive})},
		{op: "view", point: "prepare-built", hit: view, want: with(nil)},
		{op: "view", point: "prepare-recorded", hit: view, want: with(map[string]snapshots.Kind{"view": snapshots.KindView})},
		{op: "commit", point: "commit-built", hit: commit, want: with(nil)},
		{op: "commit", point: "commit-recorded", hit: commit, want: with(map[string]snapshots.Kind{"layer2": snapshots.KindCommitted}, "work")},
		// The rw image half converted into the layer: its upper dir renamed,
		// the file not yet.
		{op: "commit", point: "convert-renamed", hit: commit, want: with(map[string]snapshots.Kind{"layer2": snapshots.KindCommitted}, "work")},
		// A layer snug's differ wrote from its tar: before the record the
		// extraction stays active; after it, the layer is that image (taken
		// by a rename), whatever step the kill interrupted.
		{op: "commit-applied", point: "commit-built", prep: applyLayer, hit: commitApplied, want: with(map[string]snapshots.Kind{"extract": snapshots.KindActive})},
		{op: "commit-applied", point: "commit-recorded", prep: applyLayer, hit: commitApplied, want: with(map[string]snapshots.Kind{"layer2": snapshots.KindCommitted}), after: layer2Reads},
		{op: "commit-applied", point: "applied-taken", prep: applyLayer, hit: commitApplied, want: with(map[string]snapshots.Kind{"layer2": snapshots.KindCommitted}), after: layer2Reads},
		{op: "commit-applied", point: "unpack-renamed", prep: applyLayer, hit: commitApplied, want: with(map[string]snapshots.Kind{"layer2": snapshots.KindCommitted}), after: layer2Reads},
		// A layer another differ unpacked into the dirs on the host,
		// packed into its image at Commit.
		{op: "commit-packed", point: "commit-built", prep: unpackFiles, hit: commitApplied, want: with(map[string]snapshots.Kind{"extract": snapshots.KindActive})},
		{op: "commit-packed", point: "commit-recorded", prep: unpackFiles, hit: commitApplied, want: with(map[string]snapshots.Kind{"layer2": snapshots.KindCommitted}), after: layer2Reads},
		{op: "remove", point: "remove-recorded", hit: remove, want: with(nil, "work")},
		{op: "remove", point: "removedir-unmounted", hit: removeInBackground, want: with(nil, "work")},
		{op: "cleanup", point: "removedir-unmounted", hit: cleanup, want: with(nil)},
		// The pool makes its images in the background: empty it, and the
		// armed daemon dies refilling it at start-up.
		{op: "pool-refill", point: "create-mounted", stopped: emptyPool, want: with(nil)},
		// Killed with a premounted image mounted detached, before the pool
		// counts it: the kernel unmounts it and detaches its loop device,
		// start-up deletes the file.
		{op: "pool-refill", point: "pool-premounted", stopped: emptyPool, want: with(nil)},
		{op: "grow", point: "grow-released", hit: grow, early: true, want: with(nil)},
		{op: "reclaim", point: "reclaim-packed", hit: reclaim, want: with(nil)},
		{op: "resize", point: "quota-inflated", prep: growWork, hit: resize, want: with(nil), after: quotaIs(1 << 30)},
		{op: "resize", point: "quota-recorded", prep: growWork, hit: resize, want: with(nil), after: quotaIs(64 << 20)},
		// No image is in the mount table (the writer's live on in its
		// overlay); the daemon dies after restoring one snapshot.
		{op: "start-up", point: "reconcile-converged", stopped: unmountImages, want: with(nil)},
	}
	for _, tc := range cases {
		t.Run(tc.op+"/"+tc.point, func(t *testing.T) {
			ctx := context.Background()
			d := startDaemon(t, roottest.TempDir(t), crashPolicy)
			sn := d.Snapshotter(t)
			// A committed layer, an active snapshot on it with data, and a
			// writer on a second one.
			seedBase(t, sn)
			writeThrough(t, prepareOnBase(t, sn, "work"), "work-file", "work")
			w := startWriter(t, prepareOnBase(t, sn, "running"))
			if tc.prep != nil {
				tc.prep(ctx, t, d, sn)
			}

			d.Stop(syscall.SIGTERM)
			if tc.stopped != nil {
				tc.stopped(t, d)
			}
			d.Env = []string{"SNUG_FAILPOINT=" + tc.point}
			d.spawn()
			if tc.hit != nil && (d.answers() || !tc.early) {
				tc.hit(ctx, t, d, d.Snapshotter(t))
			}
			select {
			case <-d.done:
			case <-time.After(20 * time.Second):
				t.Fatalf("the daemon did not die at %s", tc.point)
			}
			if ws, _ := d.cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signal() != syscall.SIGKILL {
				t.Fatalf("the daemon ended with %v, not at the failpoint:\n%s", d.cmd.ProcessState, d.Log())
			}
			d.Env = nil
			d.start()
			checkAfterCrash(t, d, d.Snapshotter(t), tc.want)
			if tc.after != nil {
				tc.after(t, d)
			}
			w.requireWriting(t)
		})
	}
}

// seedBase makes the committed layer "base" holding base-file.
func seedBase(t *testing.T, sn snapshots.Snapshotter) {
	t.Helper()
	ctx := context.Background()
	mounts, err := sn.Prepare(ctx, "base-build", "")
	if err != nil {
		t.Fatal(err)
	}
	writeThrough(t, mounts, "base-file", "base")
	if err := sn.Commit(ctx, "base", "base-build"); err != nil {
		t.Fatal(err)
	}
}

// prepareOnBase prepares the active snapshot key on base.
func prepareOnBase(t *testing.T, sn snapshots.Snapshotter, key string) []mount.Mount {
	t.Helper()
	mounts, err := sn.Prepare(context.Background(), key, "base")
	if err != nil {
		t.Fatal(err)
	}
	return mounts
}

// readThrough mounts a snapshot's mounts, reads name, and unmounts.
func readThrough(t *testing.T, mounts []mount.Mount, name string) string {
	t.Helper()
	dir := t.TempDir()
	if err := mount.All(mounts, dir); err != nil {
		t.Fatal(err)
	}
	defer mount.UnmountAll(dir, 0)
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Error(err)
	}
	return string(b)
}

// writeThrough mounts a snapshot's mounts, writes name, and unmounts.
func writeThrough(t *testing.T, mounts []mount.Mount, name, content string) {
	t.Helper()
	dir := t.TempDir()
	if err := mount.All(mounts, dir); err != nil {
		t.Fatal(err)
	}
	defer mount.UnmountAll(dir, 0)
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func checkAfterCrash(t *testing.T, d *daemon, sn snapshots.Snapshotter, want map[string]snapshots.Kind) {
	t.Helper()
	ctx := context.Background()
	got := map[string]snapshots.Kind{}
	if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		got[info.Name] = info.Kind
		return nil
	}); err != nil {
		// A daemon that failed at start-up closed its socket on the
		// connection that found it listening: its log says why.
		t.Fatalf("walk after the restart: %v\n%s", err, d.Log())
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("snapshots after the restart: %v, want %v", got, want)
	}
	// Each snapshot is usable: its layers' files read; an active one takes
	// a write, and keeps what was written before the crash.
	for name, kind := range got {
		if kind == snapshots.KindCommitted || name == "running" {
			continue
		}
		mounts, err := sn.Mounts(ctx, name)
		if err != nil {
			t.Fatalf("mounts of %s: %v", name, err)
		}
		dir := t.TempDir()
		if err := mount.All(mounts, dir); err != nil {
			t.Fatalf("mount %s: %v", name, err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "base-file")); err != nil || string(b) != "base" {
			t.Errorf("%s: base-file %q, %v", name, b, err)
		}
		if kind == snapshots.KindActive {
			if err := os.WriteFile(filepath.Join(dir, "after"), []byte("x"), 0o644); err != nil {
				t.Errorf("%s: write after the restart: %v", name, err)
			}
		}
		if name == "work" {
			if b, err := os.ReadFile(filepath.Join(dir, "work-file")); err != nil || string(b) != "work" {
				t.Errorf("work: work-file %q, %v", b, err)
			}
		}
		mount.UnmountAll(dir, 0)
	}
	// Nothing leaked, nothing lost: one mount and one loop device per
	// image of a recorded snapshot, a directory per snapshot, and every
	// image checks clean (e2fsck -fn of the frozen image).
	// Views and layers being unpacked have no image.
	images, views := 0, 0
	for _, kind := range got {
		if kind == snapshots.KindView {
			views++
		}
	}
	unpacks, _ := filepath.Glob(filepath.Join(d.Root, "snapshots", "*", "unpack"))
	views += len(unpacks)
	if gone, _ := filepath.Glob(filepath.Join(d.Root, "snapshots", "*", "unpack.gone")); len(gone) > 0 {
		t.Errorf("a committed layer's unpack dirs left: %v", gone)
	}
	for _, im := range d.Status(t) {
		images++
		if im.Problem != "" || im.Health != "ok" {
			t.Errorf("%s: health %s, problem %q", im.Snapshot, im.Health, im.Problem)
		}
		requireMountedOnce(t, im.Path)
		requireCheckClean(t, d, im.Snapshot)
	}
	snapDir := filepath.Join(d.Root, "snapshots")
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(snapDir))
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != images {
		t.Errorf("%d mounts under %s for %d images", len(mounts), snapDir, images)
	}
	entries, _ := os.ReadDir(snapDir)
	if len(entries) != images+views {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("snapshot directories %v for %d images and %d views", names, images, views)
	}
	// The restarted daemon refills its pool of ready images in the
	// background, each attached for a moment while it is made: wait for
	// that to settle; a leaked device would stay.
	var backing []string
	for end := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if backing = imageLoops(d.Root); len(backing) == images || time.Now().After(end) {
			break
		}
	}
	if len(backing) != images {
		t.Errorf("%d loop devices on images under %s for %d images: %v", len(backing), d.Root, images, backing)
	}
	// No half-made image file is left, in the pool or anywhere else. One
	// the pool is making right now is finished (renamed) within moments;
	// a leaked one stays.
	var temps []string
	for end := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if temps = halfMadeImages(d.Root); len(temps) == 0 || time.Now().After(end) {
			break
		}
	}
	if len(temps) > 0 {
		t.Errorf("half-made images left: %v", temps)
	}
}

// loopsUnder lists the backing files, under prefix, of attached loop
// devices.
// imageLoops lists the backing files of loop devices under snug's root
// that are not the pool's ready images: those wait attached (pool.premount)
// in root/pool/mounted, while their file is there. One whose file is gone
// (a killed daemon's, which the kernel should have detached) is listed.
func imageLoops(root string) []string {
	var out []string
	pool := filepath.Join(root, "pool", "mounted") + "/"
	for _, b := range loopsUnder(root + "/") {
		if strings.HasPrefix(b, pool) {
			if _, err := os.Stat(b); err == nil {
				continue
			}
		}
		out = append(out, b)
	}
	return out
}

func loopsUnder(prefix string) []string {
	var backing []string
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		if b, err := os.ReadFile(l); err == nil && strings.HasPrefix(string(b), prefix) {
			backing = append(backing, strings.TrimSpace(string(b)))
		}
	}
	return backing
}

// halfMadeImages lists the image files below root that Create or Shrink
// has not finished (*.snug-tmp).
func halfMadeImages(root string) []string {
	var temps []string
	filepath.WalkDir(root, func(path string, e os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(path, ".snug-tmp") {
			temps = append(temps, path)
		}
		return nil
	})
	return temps
}

// requireCheckClean runs `snug check` on a snapshot: e2fsck -fn of its
// frozen image must find nothing.
func requireCheckClean(t *testing.T, d *daemon, name string) {
	t.Helper()
	out, err := d.Snug(context.Background(), "check", "--json", name)
	if err != nil {
		t.Errorf("snug check %s: %v\n%s", name, err, out)
		return
	}
	var res fsck.CheckResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Errorf("snug check --json %s: %v\n%s", name, err, out)
		return
	}
	if !res.Result.Clean() {
		t.Errorf("%s is not clean (e2fsck exit %d):\n%s", name, res.Result.ExitCode, res.Result.Output)
	}
}

// emptyPool deletes the daemon's ready-made images (a stopped daemon's
// premounted ones are gone already), so that its next start makes new ones.
func emptyPool(t *testing.T, d *daemon) {
	imgs, _ := filepath.Glob(filepath.Join(d.Root, "pool", "*.img"))
	mounted, _ := filepath.Glob(filepath.Join(d.Root, "pool", "mounted", "*.img"))
	for _, img := range append(imgs, mounted...) {
		if err := os.Remove(img); err != nil {
			t.Fatal(err)
		}
	}
}

// unmountImages unmounts every image mount of the stopped daemon, as a
// shutdown script might; the writer's overlay keeps its images alive
// (with private clones of their mounts), the others go.
func unmountImages(t *testing.T, d *daemon) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Join(d.Root, "snapshots")))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if err := unix.Unmount(m.Mountpoint, 0); err != nil {
			t.Fatal(err)
		}
	}
}

// writer stands for a running container: a shell appending a line to a
// file in a mounted snapshot every 20 ms.
type writer struct {
	cmd  *exec.Cmd
	file string
}

func startWriter(t *testing.T, mounts []mount.Mount) *writer {
	t.Helper()
	dir := t.TempDir()
	if err := mount.All(mounts, dir); err != nil {
		t.Fatal(err)
	}
	w := &writer{cmd: exec.Command("sh", "-c", "while :; do echo x >> log; sleep 0.02; done"), file: filepath.Join(dir, "log")}
	w.cmd.Dir = dir
	if err := w.cmd.Start(); err != nil {
		mount.UnmountAll(dir, 0)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		w.cmd.Process.Kill()
		w.cmd.Wait()
		mount.UnmountAll(dir, 0)
	})
	return w
}

// requireWriting fails unless the writer is alive and its file grows.
func (w *writer) requireWriting(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the writer died: %v", err)
	}
	before, err := os.Stat(w.file)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	after, err := os.Stat(w.file)
	if err != nil || after.Size() <= before.Size() {
		t.Fatalf("the writer stopped writing: %d bytes, then %v %v", before.Size(), after, err)
	}
}
