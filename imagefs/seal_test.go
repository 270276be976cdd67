package imagefs

import (
	"context"
	"os"
	"os/exec"
	"testing"
)

// TestSeal: a seal matches the image as it was sealed; any write to the
// file breaks it (debugfs here), and so does a mount.
func TestSeal(t *testing.T) {
	path, dir := newImage(t, 64*mib, 32*mib)
	if Sealed(path) {
		t.Fatal("a fresh image reads as sealed")
	}
	if err := Seal(path); err != nil {
		t.Fatal(err)
	}
	if !Sealed(path) {
		t.Fatal("not sealed right after Seal")
	}
	if out, err := exec.Command("debugfs", "-w", "-R", "sif <2> links_count 9", path).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
	if Sealed(path) {
		t.Fatal("still sealed after debugfs wrote the image")
	}
	if err := Seal(path); err != nil {
		t.Fatal(err)
	}
	m := mountImage(t, path, dir)
	if _, err := os.Stat(path + sealSuffix); !os.IsNotExist(err) {
		t.Fatalf("the seal outlived a mount: %v", err)
	}
	if err := m.Unmount(context.Background()); err != nil {
		t.Fatal(err)
	}
	if Sealed(path) {
		t.Fatal("sealed after a mount and unmount nobody sealed")
	}
}
