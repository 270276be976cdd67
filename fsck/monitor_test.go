package fsck

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

const mib = int64(1) << 20

// mountedImage creates and mounts a snug image that is unmounted and
// swept when the test ends.
func mountedImage(t *testing.T, name string) *imagefs.Mounted {
	t.Helper()
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	ctx := context.Background()
	dir := roottest.TempDir(t)
	path := filepath.Join(dir, name+".img")
	if err := imagefs.Create(ctx, path, imagefs.CreateOptions{Quota: 128 * mib, Window: 32 * mib}); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := imagefs.Mount(ctx, path, mnt, imagefs.MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmount(ctx) })
	return m
}

func triggerError(t *testing.T, m *imagefs.Mounted) time.Time {
	t.Helper()
	at := time.Now()
	if err := os.WriteFile(filepath.Join(m.SysfsDir(), "trigger_fs_error"), []byte("snug test\n"), 0); err != nil {
		t.Fatal(err)
	}
	return at
}

func TestMonitorReportsErrors(t *testing.T) {
	for _, mode := range []string{ModeFanotify, ModeSysfs} {
		t.Run(mode, func(t *testing.T) {
			healthy, faulty := mountedImage(t, "healthy"), mountedImage(t, "faulty")
			mon, err := NewMonitor(mode)
			if err != nil {
				t.Fatal(err)
			}
			if mon.Mode() != mode {
				t.Fatalf("mode %s, want %s", mon.Mode(), mode)
			}
			for key, m := range map[string]*imagefs.Mounted{"healthy": healthy, "faulty": faulty} {
				if n, err := mon.Watch(key, m.Dir, m.SysfsDir()); err != nil || n != 0 {
					t.Fatalf("watch of a new image: %d errors, %v", n, err)
				}
			}
			reports := make(chan Report, 16)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { mon.Run(ctx, func(r Report) { reports <- r }); close(done) }()
			t.Cleanup(func() { cancel(); <-done })

			at := triggerError(t, faulty)
			select {
			case r := <-reports:
				if r.Key != "faulty" || r.Source != mode || r.Event.Count < 1 {
					t.Fatalf("report %+v", r)
				}
				if r.Event.Error != int32(unix.EUCLEAN) {
					t.Errorf("error %d, want EUCLEAN (117)", r.Event.Error)
				}
				var sfs unix.Statfs_t
				if err := unix.Statfs(faulty.Dir, &sfs); err != nil {
					t.Fatal(err)
				}
				if r.Event.Fsid != Fsid(sfs.Fsid.Val) {
					t.Errorf("fsid %s, statfs says %s", r.Event.Fsid, Fsid(sfs.Fsid.Val))
				}
				if mode == ModeFanotify && r.Event.HandleType != fileIDInvalid {
					t.Errorf("handle type %d, want %d (whole filesystem)", r.Event.HandleType, fileIDInvalid)
				}
				t.Logf("%s: reported %v after the error", mode, r.At.Sub(at))
			case <-time.After(5 * time.Second):
				t.Fatal("no report of the error")
			}
			select {
			case r := <-reports:
				t.Fatalf("a second report: %+v", r)
			case <-time.After(200 * time.Millisecond):
			}

			// A new monitor (a restarted daemon) sees the error the
			// filesystem carries.
			again, err := NewMonitor(mode)
			if err != nil {
				t.Fatal(err)
			}
			defer again.Close()
			if n, err := again.Watch("faulty", faulty.Dir, faulty.SysfsDir()); err != nil || n != 1 {
				t.Fatalf("watch of the faulty image: %d errors, %v; want 1", n, err)
			}
			if n, err := again.Watch("healthy", healthy.Dir, healthy.SysfsDir()); err != nil || n != 0 {
				t.Fatalf("watch of the healthy image: %d errors, %v; want 0", n, err)
			}
		})
	}
}

func TestMonitorUnwatch(t *testing.T) {
	m := mountedImage(t, "img")
	mon, err := NewMonitor(ModeAuto)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mon.Watch("a", m.Dir, m.SysfsDir()); err != nil {
		t.Fatal(err)
	}
	if _, err := mon.Watch("b", m.Dir, m.SysfsDir()); err == nil {
		t.Fatal("one filesystem watched under two keys")
	}
	mon.Unwatch("a")
	if len(mon.Watched()) != 0 {
		t.Fatalf("watched after unwatch: %v", mon.Watched())
	}
	reports := make(chan Report, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { mon.Run(ctx, func(r Report) { reports <- r }); close(done) }()
	defer func() { cancel(); <-done }()
	triggerError(t, m)
	select {
	case r := <-reports:
		t.Fatalf("report of an unwatched filesystem: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
}

func execDebugfs(image, cmd string) ([]byte, error) {
	return exec.Command("debugfs", "-w", "-R", cmd, image).CombinedOutput()
}
