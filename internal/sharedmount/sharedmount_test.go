package sharedmount

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/roottest"
)

// privateBase is a tmpfs of the test's own, private whatever the host's
// propagation is, so each case starts from the same state.
func privateBase(t *testing.T) string {
	t.Helper()
	roottest.Require(t, "unshare")
	base := roottest.TempDir(t)
	if err := unix.Mount("tmpfs", base, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("", base, "", unix.MS_PRIVATE, ""); err != nil {
		t.Fatal(err)
	}
	return base
}

func mkdir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Mount("tmpfs", mkdir(t, dir), "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
}

func TestEnsure(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  Result
		// bound: a bind of dir onto itself is left for Undo to remove.
		bound bool
	}{
		{"plain directory", func(t *testing.T, dir string) {}, BoundShared, true},
		{"mount point", func(t *testing.T, dir string) { mountTmpfs(t, dir) }, MadeShared, false},
		{"mounts below already", func(t *testing.T, dir string) { mountTmpfs(t, filepath.Join(dir, "img")) }, Skipped, false},
		{"below a shared mount", func(t *testing.T, dir string) {
			parent := filepath.Dir(dir)
			mountTmpfs(t, parent)
			if err := unix.Mount("", parent, "", unix.MS_SHARED, ""); err != nil {
				t.Fatal(err)
			}
			mkdir(t, dir)
		}, AlreadyShared, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := mkdir(t, filepath.Join(privateBase(t), "p", "root"))
			tt.setup(t, dir)
			got, err := Ensure(dir)
			if err != nil || got != tt.want {
				t.Fatalf("Ensure = %v, %v; want %v", got, err, tt.want)
			}
			if again, err := Ensure(dir); err != nil || (tt.want != Skipped && again != AlreadyShared) {
				t.Fatalf("second Ensure = %v, %v; want %v", again, err, AlreadyShared)
			}
			if err := Undo(dir); err != nil {
				t.Fatal(err)
			}
			holder, _, err := look(dir)
			if err != nil {
				t.Fatal(err)
			}
			if stillBound := holder.Mountpoint == dir && isBindOfItself(holder, dir); stillBound {
				t.Errorf("Undo left the bind of %s onto itself: %+v", dir, holder)
			}
			if !tt.bound && tt.want == MadeShared && holder.Mountpoint != dir {
				t.Errorf("Undo removed a mount it did not make: %+v", holder)
			}
		})
	}
}

// TestUnmountReachesCopies is the point of the package: an image unmounted
// below dir is gone at once from a mount namespace copied before (as a
// container being created holds one until its pivot_root), instead of
// living on there.
func TestUnmountReachesCopies(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(map[bool]string{false: "private", true: "shared"}[shared], func(t *testing.T) {
			dir := mkdir(t, filepath.Join(privateBase(t), "root"))
			if shared {
				if res, err := Ensure(dir); err != nil || res != BoundShared {
					t.Fatalf("Ensure = %v, %v", res, err)
				}
				defer Undo(dir)
			}
			img := filepath.Join(dir, "img")
			mountTmpfs(t, img)
			// A copy of the mount table, made slave as runc makes a new
			// container's.
			holder := exec.Command("unshare", "--mount", "--propagation", "slave", "sleep", "60")
			if err := holder.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { holder.Process.Kill(); holder.Wait() }()
			proc := filepath.Join("/proc", strconv.Itoa(holder.Process.Pid))
			mountinfo := filepath.Join(proc, "mountinfo")
			self, _ := os.Readlink("/proc/self/ns/mnt")
			ownNamespace := func() bool {
				ns, err := os.Readlink(filepath.Join(proc, "ns", "mnt"))
				return err == nil && ns != self
			}
			copied := func() bool {
				b, err := os.ReadFile(mountinfo)
				return err == nil && strings.Contains(string(b), " "+img+" ")
			}
			for end := time.Now().Add(5 * time.Second); !ownNamespace() || !copied(); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(end) {
					t.Fatal("the copy never showed the mount")
				}
			}
			if err := unix.Unmount(img, 0); err != nil {
				t.Fatal(err)
			}
			if got := copied(); got == shared {
				// Shared, the copy must be gone; private, it stays.
				t.Errorf("shared %v: after the unmount the copy shows the mount: %v, want %v", shared, got, !shared)
			}
		})
	}
}
