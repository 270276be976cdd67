package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/moby/sys/mountinfo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/snugfs/snug/internal/roottest"
)

// TestConformanceThroughProxy runs containerd's snapshotter suite against a
// `snug serve` process per case, through containerd's own proxy client: the
// path containerd takes with snug configured as a proxy plugin.
func TestConformanceThroughProxy(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	snugBinary(t)
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		dir := filepath.Dir(root)
		d := startDaemon(t, dir, smallImages)
		conn, err := grpc.NewClient("unix://"+d.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, nil, err
		}
		sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "snug")
		return sn, func() error {
			err := errors.Join(sn.Close(), conn.Close())
			d.Stop(syscall.SIGTERM)
			if _, serr := os.Stat(d.Address); serr == nil {
				err = errors.Join(err, errors.New("socket left after SIGTERM"))
			}
			// No container uses these images: a stopped snug must leave
			// no mount and no loop device behind, or removing its root
			// (as the suite does next) pins them to deleted files.
			if left, lerr := roottest.Leftovers(d.Root); lerr != nil || len(left) > 0 {
				err = errors.Join(err, lerr, fmt.Errorf("left by snug serve after SIGTERM: %s", strings.Join(left, "; ")))
			}
			return errors.Join(err, roottest.Sweep(d.Root))
		}, nil
	})
}

// smallImages is the policy for tests that make many snapshots.
const smallImages = `
[image]
quota = "256MiB"
[window]
initial = "32MiB"
headroom = "32MiB"
check_interval = "20ms"
`

// TestImageUnmountedUnderServeDetaches: an image someone else unmounts
// while snug serve runs (umount -l; a plain umount finds it busy, as snug
// watches it) is let go of: no loop device stays attached to it for as
// long as the daemon runs, and removing the snapshot afterwards leaves
// nothing behind.
func TestImageUnmountedUnderServeDetaches(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	snugBinary(t)
	d := startDaemon(t, roottest.TempDir(t), smallImages)
	conn, err := grpc.NewClient("unix://"+d.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "snug")
	ctx := context.Background()
	if _, err := sn.Prepare(ctx, "active", ""); err != nil {
		t.Fatal(err)
	}
	mnts, _ := filepath.Glob(filepath.Join(d.Root, "snapshots", "*", "mnt"))
	var mnt string
	for _, m := range mnts {
		if mp, _ := mountinfo.Mounted(m); mp {
			mnt = m
		}
	}
	if mnt == "" || len(imageLoops(d.Root)) != 1 {
		t.Fatalf("want one mounted image, found mount %q and loop devices %v", mnt, imageLoops(d.Root))
	}
	time.Sleep(200 * time.Millisecond) // the watcher and the monitor have it
	if err := syscall.Unmount(mnt, 0); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("plain unmount of a watched image: %v, want EBUSY", err)
	}
	if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(imageLoops(d.Root)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if left := imageLoops(d.Root); len(left) > 0 {
		t.Fatalf("still attached 10 s after its unmount, with snug serve running: %v", left)
	}
	if err := sn.Remove(ctx, "active"); err != nil {
		t.Fatalf("remove after the unmount: %v", err)
	}
	if err := errors.Join(sn.Close(), conn.Close()); err != nil {
		t.Fatal(err)
	}
	d.Stop(syscall.SIGTERM)
	if left, err := roottest.Leftovers(d.Root); err != nil || len(left) > 0 {
		t.Fatalf("left: %v (%v)", left, err)
	}
}
