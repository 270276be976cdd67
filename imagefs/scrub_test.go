package imagefs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/snugfs/snug/internal/roottest"
)

func TestScrubMountedImage(t *testing.T) {
	roottest.Require(t, "debugfs")
	ctx := context.Background()
	path, dir := newImage(t, 256*mib, 64*mib)
	m := mountImage(t, path, dir)
	writeFiles(t, filepath.Join(m.Dir, "data"), 300, 5000)

	res, err := m.Scrub(ctx, ScrubAuto)
	if err != nil {
		t.Fatal(err)
	}
	// The host of the tests is ext4: no reflink, so the check runs frozen.
	if res.Method != ScrubFrozen || !res.Clean() || res.Frozen <= 0 {
		t.Fatalf("scrub of a healthy image: method %s, status %s, frozen %v\n%s", res.Method, res.Status(), res.Frozen, res.Output)
	}
	// Writers work again after the freeze.
	if err := os.WriteFile(filepath.Join(m.Dir, "data", "after"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}

	// Corrupt an inode behind the mounted filesystem's back (its journal
	// checkpointed first, as the freeze did): the check sees it.
	if out, err := exec.Command("debugfs", "-w", "-R", "sif /data/7 block[0] 0x12345678", path).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v %s", err, out)
	}
	res, err = m.Scrub(ctx, ScrubFrozen)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Uncorrected() {
		t.Fatalf("scrub missed a corrupted inode: status %s\n%s", res.Status(), res.Output)
	}
}

func TestScrubAfterExt4Error(t *testing.T) {
	ctx := context.Background()
	path, dir := newImage(t, 128*mib, 32*mib)
	m := mountImage(t, path, dir)
	if m.Stopped() {
		t.Fatal("a healthy image reads as stopped")
	}
	if err := os.WriteFile(filepath.Join(m.SysfsDir(), "trigger_fs_error"), []byte("snug test\n"), 0); err != nil {
		t.Fatal(err)
	}
	if !m.Stopped() {
		t.Fatal("an image ext4 stopped after an error does not read as stopped")
	}
	rec := m.ErrorRecord()
	if rec.Count != 1 || rec.First == nil || rec.First.Function != "trigger_test_error" || rec.First.Code != "EFSCORRUPTED" {
		t.Fatalf("error record after trigger_fs_error: %+v first %+v", rec, rec.First)
	}
	// errors=remount-ro: ext4 stopped writes, so the check needs no freeze.
	res, err := m.Scrub(ctx, ScrubFrozen)
	if err != nil {
		t.Fatal(err)
	}
	if res.Method != ScrubReadOnly || res.Frozen != 0 {
		t.Fatalf("scrub of an image ext4 stopped: method %s, frozen %v", res.Method, res.Frozen)
	}
	if err := m.Thaw(); err != nil {
		t.Fatalf("thaw of a filesystem that is not frozen: %v", err)
	}
	if err := m.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	sb, err := ReadSuperblock(path)
	if err != nil {
		t.Fatal(err)
	}
	if !sb.HasErrors() || sb.FirstError == nil || sb.FirstError.Code != "EFSCORRUPTED" {
		t.Fatalf("superblock after the error: %+v", sb.FirstError)
	}
}

// TestScrubReflink runs the check on an XFS host, which clones the image
// file: the freeze lasts only while the clone is taken.
func TestScrubReflink(t *testing.T) {
	roottest.Require(t, "mkfs.xfs", "mkfs.ext4")
	ctx := context.Background()
	base := roottest.TempDir(t)
	host := filepath.Join(base, "xfs.img")
	if err := os.WriteFile(host, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(host, 512*mib); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-m", "reflink=1", host).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v %s", err, out)
	}
	hostDir := filepath.Join(base, "xfs")
	os.Mkdir(hostDir, 0o755)
	if out, err := exec.Command("mount", "-o", "loop", host, hostDir).CombinedOutput(); err != nil {
		t.Fatalf("mount xfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", hostDir).Run() })
	path := filepath.Join(hostDir, "img")
	if err := Create(ctx, path, CreateOptions{Quota: 256 * mib, Window: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	m := mountImage(t, path, hostDir)
	writeFiles(t, filepath.Join(m.Dir, "data"), 300, 5000)
	res, err := m.Scrub(ctx, ScrubAuto)
	if err != nil {
		t.Fatal(err)
	}
	if res.Method != ScrubReflink || !res.Clean() {
		t.Fatalf("scrub on XFS: method %s, status %s\n%s", res.Method, res.Status(), res.Output)
	}
	t.Logf("reflink scrub: frozen %v, e2fsck %v", res.Frozen, res.Duration)
	if _, err := os.Stat(filepath.Join(hostDir, ".scrub-img")); !os.IsNotExist(err) {
		t.Fatalf("the clone was left behind: %v", err)
	}
}

func TestStoppedOptions(t *testing.T) {
	for opts, want := range map[string]bool{
		"rw,errors=remount-ro":               false,
		"rw,errors=remount-ro,emergency_ro":  true,
		"ro,errors=remount-ro":               true,
		"rw,shutdown":                        true,
		"rw,errors=remount-ro,noinit_itable": false,
		"":                                   false,
	} {
		if got := stoppedOptions(opts); got != want {
			t.Errorf("stoppedOptions(%q) = %v, want %v", opts, got, want)
		}
	}
}
