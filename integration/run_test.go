package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// containerPolicy: a window much smaller than the quota, so that the tests
// see the window grow under real writes.
const containerPolicy = `
[image]
quota = "1GiB"
[window]
initial = "32MiB"
headroom = "64MiB"
check_interval = "10ms"
`

// TestRunAcrossLayers imports the three-layer test image with snug and runs
// a container on it: files from every layer, a changed file, whiteouts of a
// file and of a directory, and an opaque directory all read as they should.
// Every layer came from its tar, through snug's differ.
func TestRunAcrossLayers(t *testing.T) {
	s := startStack(t, containerPolicy)
	s.importImage()
	requireImageReads(t, s)
	requireLayersFromTar(t, s.snug.Root, 3)
}

// TestRunAcrossLayersWithoutDiffer is TestRunAcrossLayers with snug's
// differ left out of containerd's configuration: containerd's walking
// differ unpacks each layer into the dirs on the host of snug's unpack
// snapshot (through its overlay, whiteouts as overlayfs's), and Commit
// packs them into the layer's image.
func TestRunAcrossLayersWithoutDiffer(t *testing.T) {
	s := startStackWith(t, containerPolicy, "", "", withoutSnugDiffer)
	s.importImage()
	requireImageReads(t, s)
	requireLayersPacked(t, s.snug.Root, 3)
}

// requireImageReads runs a container on the imported test image and checks
// what it sees of every layer.
func requireImageReads(t *testing.T, s *stack) {
	t.Helper()
	out := s.ctr("run", "--rm", "--snapshotter", "snug", testImageRef, "layers", "/bin/sh", "-c",
		`echo ok; cat /data/keep /etc/layer2; ls /data; ls -a /opaque; cd /data && sha256sum -c blob.sha256; ls -a /`)
	for _, want := range []string{"ok\n", "keep v2\n2\n", "blob\nblob.sha256\nkeep\n", ".\n..\nnew\n", "blob: OK\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("container output lacks %q:\n%s", want, out)
		}
	}
	for _, gone := range []string{"remove-me", "dir-gone", "old", "lost+found", ".snug"} {
		if strings.Contains(out, gone) {
			t.Errorf("container sees %q:\n%s", gone, out)
		}
	}
}

// TestContainersWriteToOwnImages runs two containers: what one writes lands
// in its own image only, and snug status, ctr snapshots ls and ctr
// snapshots usage agree.
func TestContainersWriteToOwnImages(t *testing.T) {
	s := startStack(t, containerPolicy)
	s.importImage()
	for _, id := range []string{"own-a", "own-b"} {
		s.ctr("run", "-d", "--snapshotter", "snug", testImageRef, id, "/bin/sleep", "600")
	}
	s.ctr("tasks", "exec", "--exec-id", "w", "own-a", "/bin/sh", "-c",
		"dd if=/dev/urandom of=/written bs=1M count=40 2>/dev/null && sync")
	if out, err := s.ctrErr("tasks", "exec", "--exec-id", "r", "own-b", "/bin/sh", "-c", "test ! -e /written"); err != nil {
		t.Errorf("own-b sees own-a's file: %v %s", err, out)
	}
	a, b := s.activeImage("own-a"), s.activeImage("own-b")
	if a.UsedBytes < 40<<20 || a.FootprintBytes < 40<<20 {
		t.Errorf("own-a's image: used %d, footprint %d after writing 40 MiB", a.UsedBytes, a.FootprintBytes)
	}
	if b.UsedBytes > 4<<20 || b.FootprintBytes > 4<<20 {
		t.Errorf("own-b's image: used %d, footprint %d, wrote nothing", b.UsedBytes, b.FootprintBytes)
	}
	if a.Path == b.Path || a.Device == b.Device {
		t.Errorf("containers share an image: %s %s", a.Path, b.Path)
	}

	// ctr snapshots ls and snug status list the same snapshots.
	ls := s.ctr("snapshots", "--snapshotter", "snug", "ls")
	for _, im := range s.status() {
		key := im.Snapshot[strings.Index(im.Snapshot[strings.Index(im.Snapshot, "/")+1:], "/")+strings.Index(im.Snapshot, "/")+2:]
		if !strings.Contains(ls, key) {
			t.Errorf("snug status has %s, ctr snapshots ls does not:\n%s", key, ls)
		}
	}
	// ctr snapshots usage reports the image's real footprint.
	usage := s.ctr("snapshots", "--snapshotter", "snug", "usage", "own-a")
	size := parseUsage(t, usage, "own-a")
	if diff := size - a.FootprintBytes; diff < -(1<<20) || diff > 1<<20 {
		t.Errorf("ctr snapshots usage says %d bytes, snug status %d", size, a.FootprintBytes)
	}
}

// parseUsage reads the size column of `ctr snapshots usage` for key.
func parseUsage(t *testing.T, out, key string) int64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + `\s+([0-9.]+)\s+(B|KiB|MiB|GiB)\s`)
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no usage for %s in:\n%s", key, out)
	}
	f, _ := strconv.ParseFloat(m[1], 64)
	unit := map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m[2]]
	return int64(f * unit)
}

// TestQuotaEnforced sets a container's quota with containerd's standard
// label and fills it: the writer gets ENOSPC at the quota, not before,
// although the window starts at 32 MiB and has to grow under the writer.
func TestQuotaEnforced(t *testing.T) {
	s := startStack(t, containerPolicy)
	s.importImage()
	const quota = 256 << 20
	out, _ := s.ctrErr("run", "--rm", "--snapshotter", "snug",
		"--snapshotter-label", fmt.Sprintf("containerd.io/snapshot/max-size=%d", quota),
		testImageRef, "quota", "/bin/sh", "-c",
		`dd if=/dev/zero of=/fill bs=1M 2>&1; sync; echo size=$(stat -c %s /fill)`)
	if !strings.Contains(out, "No space left on device") {
		t.Fatalf("no ENOSPC filling a %d-byte quota:\n%s", quota, out)
	}
	m := regexp.MustCompile(`size=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no size in:\n%s", out)
	}
	written, _ := strconv.ParseInt(m[1], 10, 64)
	// ext4's own metadata (journal, inode tables, bitmaps, its reserve)
	// comes out of the quota. What is left, a fresh image of the same quota
	// with its whole window free shows: the writer must get all of it.
	usable := usableBytes(t, quota)
	if written < usable-2<<20 || written > quota {
		t.Errorf("wrote %d MiB before ENOSPC; the quota is %d MiB, of which ext4 lets files use %d MiB",
			written>>20, quota>>20, usable>>20)
	}
	t.Logf("wrote %d MiB; quota %d MiB, usable by files %d MiB", written>>20, quota>>20, usable>>20)

	// A label snug cannot honour is refused with a message naming it.
	out, err := s.ctrErr("run", "--rm", "--snapshotter", "snug",
		"--snapshotter-label", "containerd.io/snapshot/max-size=lots", testImageRef, "badquota", "/bin/true")
	if err == nil || !strings.Contains(out, "containerd.io/snapshot/max-size") {
		t.Errorf("bad max-size label accepted or not named: %v\n%s", err, out)
	}
}

// TestRemovalLeavesNothing removes containers and the image: every mount,
// loop device and image file of snug goes with them.
func TestRemovalLeavesNothing(t *testing.T) {
	s := startStack(t, containerPolicy)
	s.importImage()
	s.ctr("run", "--rm", "--snapshotter", "snug", testImageRef, "gone-1", "/bin/sh", "-c", "echo x > /x")
	s.ctr("run", "-d", "--snapshotter", "snug", testImageRef, "gone-2", "/bin/sleep", "600")
	s.ctr("tasks", "kill", "-s", "KILL", "gone-2")
	waitTaskGone(t, s, "gone-2")
	s.ctr("containers", "rm", "gone-2")
	s.ctr("images", "rm", "--sync", testImageRef)
	var left []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		left = snugLeftovers(t, s.snug.Root)
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Errorf("left after removing everything: %v", left)
	}
	if out := s.ctr("snapshots", "--snapshotter", "snug", "ls"); strings.Count(out, "\n") > 1 {
		t.Errorf("snapshots left:\n%s", out)
	}
}

func waitTaskGone(t *testing.T, s *stack, id string) {
	t.Helper()
	for range 100 {
		if out, _ := s.ctrErr("tasks", "delete", id); !strings.Contains(out, "running") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// snugLeftovers lists mounts, loop devices and files under snug's root that
// belong to a snapshot. The root's own mount, the shared bind a running
// snug keeps on its state directory (internal/sharedmount), is not one.
func snugLeftovers(t *testing.T, root string) []string {
	t.Helper()
	var left []string
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(root))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if m.Mountpoint != root {
			left = append(left, "mount "+m.Mountpoint)
		}
	}
	for _, b := range imageLoops(root) {
		left = append(left, "loop "+b)
	}
	entries, _ := os.ReadDir(filepath.Join(root, "snapshots"))
	for _, e := range entries {
		left = append(left, "dir "+e.Name())
	}
	return left
}

// TestDaemonRestartKeepsContainers stops snug serve under running
// containers, with SIGTERM and with SIGKILL: the containers keep running
// and writing, and after the restart every snapshot is served again, each
// image mounted once on one loop device. Then containerd restarts under a
// running snug: snug follows its task exits again, and containers run.
func TestDaemonRestartKeepsContainers(t *testing.T) {
	s := startStack(t, containerPolicy)
	s.importImage()
	s.ctr("run", "-d", "--snapshotter", "snug", testImageRef, "survivor", "/bin/sh", "-c",
		"i=0; while true; do echo $i >> /log; i=$((i+1)); sleep 0.05; done")
	before := s.status()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		s.snug.Restart(sig)
		s.waitSnapshotter()
		if out := s.ctr("tasks", "ls"); !regexp.MustCompile(`survivor\s+\d+\s+RUNNING`).MatchString(out) {
			t.Fatalf("after %v: container not running:\n%s", sig, out)
		}
		after := s.status()
		served := map[string]bool{}
		for _, im := range after {
			served[im.Snapshot] = true
		}
		for _, im := range before {
			if !served[im.Snapshot] {
				t.Errorf("after %v: %s is no longer served", sig, im.Snapshot)
			}
		}
		// Only the images from before: a container of the previous round
		// may be being removed by containerd's GC right now.
		wanted := map[string]bool{}
		for _, im := range before {
			wanted[im.Snapshot] = true
		}
		for _, im := range after {
			if !wanted[im.Snapshot] {
				continue
			}
			if im.Problem != "" || !im.Mounted {
				t.Errorf("after %v: %s: %s", sig, im.Snapshot, im.Problem)
			}
			requireMountedOnce(t, im.Path)
		}
		// The container still writes to its image, and a new one starts.
		n1 := s.ctr("tasks", "exec", "--exec-id", "c1", "survivor", "/bin/sh", "-c", "wc -l < /log")
		time.Sleep(300 * time.Millisecond)
		n2 := s.ctr("tasks", "exec", "--exec-id", "c2", "survivor", "/bin/sh", "-c", "wc -l < /log")
		if strings.TrimSpace(n1) == strings.TrimSpace(n2) {
			t.Errorf("after %v: container stopped writing (%s lines)", sig, strings.TrimSpace(n1))
		}
		out := s.ctr("run", "--rm", "--snapshotter", "snug", testImageRef, "fresh-"+strconv.Itoa(int(sig)), "/bin/sh", "-c", "echo ok")
		if !strings.Contains(out, "ok") {
			t.Errorf("after %v: new container printed %q", sig, out)
		}
	}

	following := strings.Count(s.snug.Log(), "following containerd's task exits")
	s.restartContainerd()
	for end := time.Now().Add(30 * time.Second); strings.Count(s.snug.Log(), "following containerd's task exits") == following; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("snug does not follow the restarted containerd:\n%s", lastLines(s.snug.Log(), 20))
		}
	}
	if out := s.ctr("tasks", "ls"); !regexp.MustCompile(`survivor\s+\d+\s+RUNNING`).MatchString(out) {
		t.Errorf("after containerd's restart: container not running:\n%s", out)
	}
	if out := s.ctr("run", "--rm", "--snapshotter", "snug", testImageRef, "fresh-ctrd", "/bin/sh", "-c", "echo ok"); !strings.Contains(out, "ok") {
		t.Errorf("after containerd's restart: new container printed %q", out)
	}
}

// requireMountedOnce checks an image has exactly one loop device and that
// device exactly one mount.
func requireMountedOnce(t *testing.T, image string) {
	t.Helper()
	devs, err := imagefs.FindLoops(image)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 {
		t.Errorf("%s: %d loop devices %v, want 1", image, len(devs), devs)
		return
	}
	all, err := mountinfo.GetMounts(func(i *mountinfo.Info) (bool, bool) { return i.Source != devs[0], false })
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 {
		t.Errorf("%s on %s: %d mounts, want 1", image, devs[0], len(all))
	}
}

// usableBytes is the space files can use in a snug image of this quota: the
// free space of a fresh image whose window is the whole quota.
func usableBytes(t *testing.T, quota int64) int64 {
	t.Helper()
	ctx := context.Background()
	dir := roottest.TempDir(t)
	img := filepath.Join(dir, "control.img")
	// Made as the stacks' snug makes it: at the default policy's ceiling.
	o := imagefs.CreateOptions{Quota: quota, Ceiling: config.Default().Image.MaxQuota.Bytes(), DirectIO: true}
	if err := imagefs.Create(ctx, img, o); err != nil {
		t.Fatal(err)
	}
	var avail int64
	err := imagefs.WithMount(ctx, img, imagefs.MountOptions{DirectIO: true}, func(m *imagefs.Mounted) error {
		// The window grown as far as the quota lets it.
		if _, err := m.EnsureFree(ctx, quota); err != nil {
			return err
		}
		var sfs unix.Statfs_t
		if err := unix.Statfs(m.Dir, &sfs); err != nil {
			return err
		}
		avail = int64(sfs.Bavail) * sfs.Bsize
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return avail
}
