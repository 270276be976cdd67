package imagefs

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/roottest"
)

// TestAttachPassesAHeldDevice: the free loop device the kernel offers is
// held by an exclusive opener (as a prober or a claim not yet released
// holds one), so LOOP_CONFIGURE on it fails with EBUSY for as long as it
// is held: Attach takes another device instead of giving up.
func TestAttachPassesAHeldDevice(t *testing.T) {
	ctx := context.Background()
	path := rawFile(t, "held.img")
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
	if err != nil {
		t.Fatal(err)
	}
	held := "/dev/loop" + strconv.Itoa(n)
	claim, err := openLoopNode(ctx, held, os.O_RDONLY|unix.O_EXCL)
	if err != nil {
		t.Fatal(err)
	}
	defer claim.Close()

	loop, err := Attach(ctx, path, AttachOptions{})
	if err != nil {
		t.Fatalf("attach while %s is held: %v", held, err)
	}
	defer loop.Close()
	if loop.Device == held {
		t.Fatalf("attached to the held device %s", held)
	}
	t.Logf("%s held; attached to %s", held, loop.Device)
}

// rawFile is a 4 MiB file of zeros (no filesystem) to attach, in a fresh
// directory swept when the test ends; the test needs root.
func rawFile(t *testing.T, name string) string {
	t.Helper()
	roottest.Require(t)
	path := filepath.Join(roottest.TempDir(t), name)
	if err := os.WriteFile(path, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
