package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// idleDuration is how long TestIdleMountedFootprint keeps images mounted:
// 5 minutes by default (the figure), SNUG_IDLE_MOUNT to change it.
func idleDuration(t *testing.T) time.Duration {
	if v := os.Getenv("SNUG_IDLE_MOUNT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SNUG_IDLE_MOUNT: %v", err)
		}
		return d
	}
	return 5 * time.Minute
}

// TestIdleMountedFootprint mounts a fresh 10 GiB image the way snug does and
// leaves it mounted: ext4 would zero its inode tables lazily in the
// background, which on some hosts allocates them in the image file. A
// control image mounted with the kernel's defaults (init_itable, no delay)
// shows the background zeroing really runs during the test; snug's image
// must still cost at most 8 MiB on the host and have zeroed nothing.
func TestIdleMountedFootprint(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck", "dumpe2fs")
	dir := roottest.TempDir(t)
	ctx := context.Background()
	snug := filepath.Join(dir, "snug.img")
	control := filepath.Join(dir, "control.img")
	for _, p := range []string{snug, control} {
		if err := imagefs.Create(ctx, p, imagefs.CreateOptions{Quota: 10 << 30, Window: 256 << 20, DirectIO: true}); err != nil {
			t.Fatal(err)
		}
	}
	m, err := imagefs.Mount(ctx, snug, mkdir(t, dir, "snug"), imagefs.MountOptions{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmount(ctx)
	loop, err := imagefs.Attach(ctx, control, imagefs.AttachOptions{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	controlDir := mkdir(t, dir, "control")
	err = unix.Mount(loop.Device, controlDir, "ext4", 0, "init_itable=0")
	loop.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(controlDir, 0)

	d := idleDuration(t)
	t.Logf("idling %v", d)
	time.Sleep(d)
	st, err := m.Stat()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snug image after %v mounted: footprint %d bytes", d, st.FootprintBytes)
	if st.FootprintBytes > 8<<20 {
		t.Fatalf("idle mounted 10GiB image costs %d bytes, want <= 8MiB", st.FootprintBytes)
	}
	if err := m.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(controlDir, 0); err != nil {
		t.Fatal(err)
	}
	zeroedSnug, zeroedControl := zeroedGroups(t, snug), zeroedGroups(t, control)
	t.Logf("block groups with zeroed inode tables: snug %d, control %d", zeroedSnug, zeroedControl)
	if zeroedControl == 0 {
		t.Fatal("the control mount zeroed no inode table: the test did not exercise lazy init")
	}
	if zeroedSnug != 0 {
		t.Fatalf("snug's mount zeroed %d inode tables in the background", zeroedSnug)
	}
}

func mkdir(t *testing.T, parent, name string) string {
	p := filepath.Join(parent, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// zeroedGroups counts block groups whose inode table ext4 has zeroed.
func zeroedGroups(t *testing.T, image string) int {
	out, err := runOut("dumpe2fs", image)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(out, "ITABLE_ZEROED")
}
