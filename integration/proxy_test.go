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

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
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
