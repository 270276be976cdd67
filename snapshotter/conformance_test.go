package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/internal/roottest"
)

// testConfig is the policy the tests run with: small images (the suite
// makes hundreds) and the default window machinery.
func testConfig(root string) config.Config {
	cfg := config.Default()
	cfg.Root = root
	cfg.Image.Quota = 256 * config.MiB
	cfg.Window.Initial = 32 * config.MiB
	cfg.Window.Headroom = 32 * config.MiB
	cfg.Window.CheckInterval = 20 * time.Millisecond
	return cfg
}

// TestConformance runs containerd's own snapshotter suite in-process. It runs
// the overlay variant of the Rename case (named "overlayfs"): snug layers are
// combined by overlayfs, which renames a directory from a lower layer only
// with redirect_dir, and containerd's overlayfs snapshotter leaves it off too.
func TestConformance(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := New(ctx, testConfig(root))
		if err != nil {
			return nil, nil, err
		}
		// Close unmounts the images no container uses: here all of them.
		// What it leaves is a leak the sweep would hide.
		return sn, func() error {
			err := sn.Close()
			if left, lerr := roottest.Leftovers(root); lerr != nil || len(left) > 0 {
				err = errors.Join(err, lerr, fmt.Errorf("left by Close: %s", strings.Join(left, "; ")))
			}
			return errors.Join(err, roottest.Sweep(root))
		}, nil
	})
}

// newTestSnapshotter opens a snapshotter with testConfig in a fresh root,
// closed and swept when the test ends.
func newTestSnapshotter(t *testing.T) (*Snapshotter, string) {
	t.Helper()
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	root := roottest.TempDir(t)
	sn, err := New(context.Background(), testConfig(root))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	return sn, root
}
