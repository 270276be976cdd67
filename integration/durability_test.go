package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/iowork"
	"github.com/snugfs/snug/internal/roottest"
)

// durabilityPolicies are the image policies whose crash behaviour the test
// shows: the default and each option that changes how a write reaches the
// host disk.
// A class's direct_io runs too: its container's loop device is switched to
// the host's page cache after its image was attached with direct I/O; and a
// class's async_commit (with discard), which its labelled container's image
// is mounted with.
var durabilityPolicies = []struct {
	name, toml string
	label      string // a snapshot label for the container
	io         string // the loop device's mode snug status must show
	commit     string // the journal's commit mode snug status must show
}{
	{"default", "", "", "direct", "ordered"},
	{"fast-commit", "[image]\nfast_commit = true\n", "", "direct", "ordered"},
	{"buffered-loop", "[image]\ndirect_io = false\n", "", "buffered", "ordered"},
	{"class-buffered-loop", "[policies.db.image]\ndirect_io = false\n", config.LabelClass + "=db", "buffered", "ordered"},
	{"discard", "[image]\ndiscard = true\n", "", "direct", "ordered"},
	{"async-commit", "[image]\nasync_commit = true\n", "", "direct", "async"},
	{"class-async-commit", "[policies.ci.image]\nasync_commit = true\ndiscard = true\n", config.LabelClass + "=ci", "direct", "async"},
}

// TestFsyncDurability is what an fsync'd write in a snug container
// survives. A container appends fsync'd records, and every 25th record
// makes an fsync'd file and fsyncs its directory, acknowledging each record
// to a file on the host only after its fsyncs returned. Then the container
// and `snug serve` are killed with SIGKILL, and while the image is still
// mounted as they left it (its journal not flushed, nothing unmounted) a
// crash image is taken: a reflink clone of the backing file, which an XFS
// host makes in one step, so it holds exactly the writes the loop device
// had completed at that instant, as a host crash would leave them.
//
// Both recovery paths must give back every acknowledged record and file:
// the kernel's (a mount replays the journal and the fast commits), and
// snug's offline repair (`snug image repair`, as the error monitor runs it);
// after either, e2fsck -fn must find the image clean. Run for the default policy and each
// option that changes the write path.
func TestFsyncDurability(t *testing.T) {
	requireStack(t)
	roottest.Require(t, "mkfs.xfs", "e2fsck")
	for _, p := range durabilityPolicies {
		t.Run(p.name, func(t *testing.T) { fsyncDurability(t, p.toml, p.label, p.io, p.commit) })
	}
}

func fsyncDurability(t *testing.T, policy, label, io, commit string) {
	dir := roottest.TempDir(t)
	state := mountXFS(t, dir, "state")
	tools := filepath.Join(dir, "tools")
	acks := filepath.Join(dir, "acks")
	for _, d := range []string{tools, acks} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	buildIowork(t, tools)
	s := startStackIn(t, dir, policy, "", "")
	s.importImage()
	run := []string{"run", "-d", "--snapshotter", "snug"}
	if label != "" {
		run = append(run, "--snapshotter-label", label)
	}
	s.ctr(append(run,
		"--mount", "type=bind,src="+tools+",dst=/.bench/tools,options=rbind:ro",
		"--mount", "type=bind,src="+acks+",dst=/acks,options=rbind",
		testImageRef, "durable", "/.bench/tools/iowork", "durable", "/data/durable", "/acks/acks")...)
	im := s.activeImage("durable")
	if im.IO != io || im.Commit != commit {
		t.Fatalf("the container's image: I/O %q, commit %q; want %q, %q", im.IO, im.Commit, io, commit)
	}
	image := im.Path
	if !strings.HasPrefix(image, state) {
		t.Fatalf("the image %s is not on the XFS host %s", image, state)
	}
	ackFile := filepath.Join(acks, "acks")
	waitAcks(t, ackFile, 300)
	requireFlushPerFsync(t, image, ackFile, 100)

	// The crash: snug first, so nothing reacts to the container's end.
	s.snug.Stop(syscall.SIGKILL)
	s.ctr("tasks", "kill", "-s", "KILL", "durable")
	waitStopped(t, s, "durable")
	crash := filepath.Join(state, "crash.img")
	reflinkCopy(t, image, crash)
	offline := filepath.Join(state, "crash-e2fsck.img")
	reflinkCopy(t, crash, offline)

	// The kernel's recovery: mount (replaying the journal), read, unmount.
	kernel := verifyCrashImage(t, crash, ackFile, func(img string) { mountRecover(t, img) })
	// snug's repair (snug image repair: e2fsck -fy, after the kernel's
	// replay where the journal has fast commits to replay).
	offlineRes := verifyCrashImage(t, offline, ackFile, func(img string) {
		if out, err := s.snug.Snug(context.Background(), "image", "repair", img); err != nil {
			t.Fatalf("snug image repair of the crash image: %v\n%s", err, out)
		}
	})
	t.Logf("crash image: %d records and %d files acknowledged; kernel replay: %d records, snug image repair: %d records",
		kernel.Acked, kernel.Files, kernel.Records, offlineRes.Records)

	// The live image, after snug starts again on it: still whole.
	s.snug.start()
	s.ctrErr("tasks", "delete", "durable")
}

// verifyCrashImage recovers a crash image with recover, checks it with
// e2fsck -fn and verifies the writer's acknowledged records in it.
func verifyCrashImage(t *testing.T, img, acks string, recover func(string)) iowork.Verified {
	t.Helper()
	mnt := recoveredMount(t, img, recover)
	defer exec.Command("umount", mnt).Run()
	v, err := iowork.Verify(filepath.Join(mnt, "upper", "data", "durable"), acks)
	if err != nil {
		t.Fatalf("%s: %v", filepath.Base(img), err)
	}
	if v.Acked < 400 {
		t.Fatalf("only %d acknowledged records", v.Acked)
	}
	return v
}

// recoveredMount recovers a crash image with recover, checks it with
// e2fsck -fn and mounts it read-only; the caller unmounts it.
func recoveredMount(t *testing.T, img string, recover func(string)) string {
	t.Helper()
	recover(img)
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn of %s after recovery: %v\n%s", filepath.Base(img), err, out)
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop,ro,noload", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount %s: %v %s", img, err, out)
	}
	return mnt
}

// mountRecover mounts an image read-write and unmounts it: the kernel
// replays its journal (and fast commits) at the mount.
func mountRecover(t *testing.T, img string) {
	t.Helper()
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount %s (journal replay): %v %s", img, err, out)
	}
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount %s: %v %s", mnt, err, out)
	}
}

// mountXFS mounts a fresh XFS filesystem (reflink on) at dir/name.
func mountXFS(t *testing.T, dir, name string) string {
	t.Helper()
	img := filepath.Join(dir, name+".xfs")
	mnt := filepath.Join(dir, name)
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{
		{"truncate", "-s", "4G", img},
		{"mkfs.xfs", "-q", "-m", "reflink=1", img},
		{"mount", "-o", "loop", img, mnt},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", strings.Join(c, " "), err, out)
		}
	}
	return mnt
}

// reflinkCopy clones src to dst (FICLONE): one atomic copy of the file as
// it is, mounted or not.
func reflinkCopy(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		t.Fatalf("FICLONE %s: %v", src, err)
	}
}

// waitAcks waits until the writer acknowledged n records.
func waitAcks(t *testing.T, file string, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		got := countLines(file)
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the writer acknowledged %d records in 2 minutes, want %d", got, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// requireFlushPerFsync fails the test unless the image's loop device
// completes at least one cache flush for each record the writer
// acknowledges while n more are: every fsync in the container must reach
// the host's disk, which the crash image (a clone of the backing file,
// page cache included) cannot show. One record less is allowed for the
// fsync that straddles the first count.
func requireFlushPerFsync(t *testing.T, image, ackFile string, n int) {
	t.Helper()
	devs, err := imagefs.FindLoops(image)
	if err != nil || len(devs) != 1 {
		t.Fatalf("the loop device of %s: %v (%v)", image, devs, err)
	}
	flushes0, err := roottest.Flushes(devs[0])
	if err != nil {
		t.Fatal(err)
	}
	acks0 := countLines(ackFile)
	waitAcks(t, ackFile, acks0+n)
	flushes1, err := roottest.Flushes(devs[0])
	if err != nil {
		t.Fatal(err)
	}
	acks := countLines(ackFile) - acks0
	flushes := int(flushes1 - flushes0)
	t.Logf("%s: %d flushes for %d acknowledged records", devs[0], flushes, acks)
	if flushes < acks-1 {
		t.Fatalf("%s completed %d cache flushes while the container fsync'd %d records: its fsyncs do not reach the host disk", devs[0], flushes, acks)
	}
}

// countLines is how many lines the file holds now.
func countLines(file string) int {
	b, _ := os.ReadFile(file)
	return bytes.Count(b, []byte("\n"))
}

// waitStopped waits until containerd reports the task stopped: the writer
// is gone and writes nothing more.
func waitStopped(t *testing.T, s *stack, id string) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		out, err := s.ctrErr("tasks", "ls")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) >= 3 && f[0] == id && f[2] == "STOPPED" {
				return
			}
		}
	}
	t.Fatalf("task %s did not stop", id)
}
