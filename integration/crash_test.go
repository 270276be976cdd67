package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/moby/sys/mountinfo"

	"github.com/snugfs/snug/internal/roottest"
)

// crashCase is one kill -9 of the daemon in the middle of a snapshot
// operation, and what must be true after it restarts.
type crashCase struct {
	point string // the failpoint the daemon dies at
	// op is the operation that hits it; setup runs before with no failpoint.
	op func(ctx context.Context, sn snapshots.Snapshotter) error
	// want lists the snapshot names after the restart (kind per name).
	want map[string]snapshots.Kind
}

// TestCrashMatrix kills snug serve with SIGKILL inside each step of
// Prepare, Commit and Remove that changes state (internal/failpoint), starts
// it again, and checks: containerd's view (Walk) is consistent, each active
// snapshot can be mounted, written and read, every image is mounted exactly
// once, no mount or loop device or directory is left over, and every image
// is healthy. docs/crash.md reports the matrix.
func TestCrashMatrix(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	base := map[string]snapshots.Kind{"base": snapshots.KindCommitted, "work": snapshots.KindActive}
	with := func(extra map[string]snapshots.Kind, drop ...string) map[string]snapshots.Kind {
		m := map[string]snapshots.Kind{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		for _, k := range drop {
			delete(m, k)
		}
		return m
	}
	prepare := func(ctx context.Context, sn snapshots.Snapshotter) error {
		_, err := sn.Prepare(ctx, "new", "base")
		return err
	}
	commit := func(ctx context.Context, sn snapshots.Snapshotter) error {
		return sn.Commit(ctx, "layer2", "work")
	}
	remove := func(ctx context.Context, sn snapshots.Snapshotter) error {
		return sn.Remove(ctx, "work")
	}
	cases := []crashCase{
		{"prepare-built", prepare, with(nil)},
		{"prepare-renamed", prepare, with(nil)},
		{"prepare-recorded", prepare, with(map[string]snapshots.Kind{"new": snapshots.KindActive})},
		{"commit-built", commit, with(nil)},
		{"commit-recorded", commit, with(map[string]snapshots.Kind{"layer2": snapshots.KindCommitted}, "work")},
		{"remove-recorded", remove, with(nil, "work")},
	}
	for _, tc := range cases {
		t.Run(tc.point, func(t *testing.T) {
			ctx := context.Background()
			d := startDaemon(t, roottest.TempDir(t), "")
			sn := d.Snapshotter(t)
			// A committed layer and an active snapshot on it, with data.
			mounts, err := sn.Prepare(ctx, "base-build", "")
			if err != nil {
				t.Fatal(err)
			}
			writeThrough(t, mounts, "base-file", "base")
			if err := sn.Commit(ctx, "base", "base-build"); err != nil {
				t.Fatal(err)
			}
			if mounts, err = sn.Prepare(ctx, "work", "base"); err != nil {
				t.Fatal(err)
			}
			writeThrough(t, mounts, "work-file", "work")

			d.Stop(syscall.SIGTERM)
			d.Env = []string{"SNUG_FAILPOINT=" + tc.point}
			d.start()
			sn = d.Snapshotter(t)
			if err := tc.op(ctx, sn); err == nil {
				t.Fatalf("%s: the operation succeeded; the failpoint was not reached", tc.point)
			}
			select {
			case <-d.done:
			case <-time.After(10 * time.Second):
				t.Fatalf("the daemon did not die at %s", tc.point)
			}
			d.Env = nil
			d.start()
			sn = d.Snapshotter(t)
			checkAfterCrash(t, d, sn, tc.want)
		})
	}
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
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("snapshots after the restart: %v, want %v", got, want)
	}
	// Each active snapshot is usable: its layers' files read, a write
	// goes in and reads back.
	for name, kind := range got {
		if kind != snapshots.KindActive {
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
		if err := os.WriteFile(filepath.Join(dir, "after"), []byte("x"), 0o644); err != nil {
			t.Errorf("%s: write after the restart: %v", name, err)
		}
		if name == "work" {
			if b, err := os.ReadFile(filepath.Join(dir, "work-file")); err != nil || string(b) != "work" {
				t.Errorf("work: work-file %q, %v", b, err)
			}
		}
		mount.UnmountAll(dir, 0)
	}
	// Nothing leaked, nothing lost: one mount and one loop device per
	// image of a recorded snapshot, no other directory.
	images := 0
	for _, im := range d.Status(t) {
		if im.Kind == "view" {
			continue
		}
		images++
		if im.Problem != "" || im.Health != "ok" {
			t.Errorf("%s: health %s, problem %q", im.Snapshot, im.Health, im.Problem)
		}
		requireMountedOnce(t, im.Path)
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
	if len(entries) != images {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("snapshot directories %v for %d images", names, images)
	}
	// The restarted daemon refills its pool of ready images in the
	// background, each attached for a moment while it is made: wait for
	// that to settle; a leaked device would stay.
	var backing []string
	for end := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		backing = backing[:0]
		loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
		for _, l := range loops {
			if b, err := os.ReadFile(l); err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), d.Root+"/") {
				backing = append(backing, strings.TrimSpace(string(b)))
			}
		}
		if len(backing) == images || time.Now().After(end) {
			break
		}
	}
	if len(backing) != images {
		t.Errorf("%d loop devices on images under %s for %d images: %v", len(backing), d.Root, images, backing)
	}
}
