package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/roottest"
)

// TestCraftedImage gives the daemon images it did not make, as someone
// with write access to its state could: one whose upper directory is a
// symlink to the host's /etc (an overlay on it would write the host's
// files), and one whose superblock claims another block size. The daemon
// must start and serve the sound snapshots, refuse the crafted one with an
// error that says so, never mount anything outside its state directory,
// and deal with the broken superblock as any damaged image (an incident
// repairs it from a backup superblock).
func TestCraftedImage(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	d := startDaemon(t, roottest.TempDir(t), "")
	sn := d.Snapshotter(t)
	ctx := context.Background()
	seedBase(t, sn)
	writeThrough(t, prepareOnBase(t, sn, "good"), "good-file", "good")
	prepareOnBase(t, sn, "evil")
	writeThrough(t, prepareOnBase(t, sn, "badsb"), "badsb-file", "badsb")
	evil, badsb := imageOf(t, d, "evil"), imageOf(t, d, "badsb")
	// Killed: every image stays mounted for the crafting below (SIGTERM
	// would unmount the unused ones).
	d.Stop(syscall.SIGKILL)

	// evil: upper becomes a symlink to /etc.
	evilMnt := filepath.Join(filepath.Dir(evil.Path), "mnt")
	if err := os.Rename(filepath.Join(evilMnt, "upper"), filepath.Join(evilMnt, "upper.real")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(evilMnt, "upper")); err != nil {
		t.Fatal(err)
	}
	// badsb: unmounted, its primary superblock says 1 KiB blocks
	// (s_log_block_size, at 1024+24, from 2 to 0).
	if err := unix.Unmount(filepath.Join(filepath.Dir(badsb.Path), "mnt"), 0); err != nil {
		t.Fatal(err)
	}
	waitDetached(t, badsb.Path)
	f, err := os.OpenFile(badsb.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0, 0, 0, 0}, 1024+24); err != nil {
		t.Fatal(err)
	}
	f.Close()

	d.start()
	sn = d.Snapshotter(t)
	if mounts, err := sn.Mounts(ctx, "good"); err != nil {
		t.Errorf("a sound snapshot beside crafted ones: %v", err)
	} else if b := readThrough(t, mounts, "good-file"); b != "good" {
		t.Errorf("good-file: %q", b)
	}
	if _, err := sn.Mounts(ctx, "evil"); err == nil || !strings.Contains(err.Error(), "crafted") {
		t.Errorf("Mounts of an image whose upper is a symlink to /etc: %v", err)
	}
	// The broken superblock is an unmountable image: an incident repairs
	// it from a backup, and it is served again.
	var im = imageOf(t, d, "badsb")
	for end := time.Now().Add(30 * time.Second); im.Problem != "" && time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		im = imageOf(t, d, "badsb")
	}
	if im.Problem != "" {
		t.Errorf("badsb: %s", im.Problem)
	} else {
		mounts, err := sn.Mounts(ctx, "badsb")
		if err != nil {
			t.Fatal(err)
		}
		if b := readThrough(t, mounts, "badsb-file"); b != "badsb" {
			t.Errorf("badsb-file after the repair: %q", b)
		}
	}
	// Nothing of snug's is mounted outside its state.
	infos, err := mountinfo.GetMounts(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, mi := range infos {
		backing, err := os.ReadFile("/sys/block/" + filepath.Base(mi.Source) + "/loop/backing_file")
		if err == nil && strings.HasPrefix(string(backing), d.Root+"/") && !strings.HasPrefix(mi.Mountpoint, d.Root+"/") {
			t.Errorf("%s (%s) mounted outside the state, on %s", mi.Source, strings.TrimSpace(string(backing)), mi.Mountpoint)
		}
	}
	if _, err := os.Lstat("/etc/upper.real"); err == nil {
		t.Error("snug wrote into the host's /etc")
	}
	for _, k := range []string{"evil", "badsb", "good"} {
		if err := sn.Remove(ctx, k); err != nil {
			t.Errorf("remove %s: %v", k, err)
		}
	}
}

// waitDetached waits until no loop device backs image.
func waitDetached(t *testing.T, image string) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		attached := false
		loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
		for _, l := range loops {
			if b, err := os.ReadFile(l); err == nil && strings.TrimSpace(string(b)) == image {
				attached = true
			}
		}
		if !attached {
			return
		}
	}
	t.Fatalf("%s still attached", image)
}
