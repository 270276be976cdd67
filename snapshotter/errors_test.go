package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/snugfs/snug/imagefs"
)

// TestQuarantinedMountsFailPrecondition: the Mounts of a quarantined
// snapshot fail with the one quarantine sentinel, the reason, and a class
// containerd understands: FailedPrecondition over gRPC, not Unknown.
func TestQuarantinedMountsFailPrecondition(t *testing.T) {
	ctx := context.Background()
	sn, _ := newTestSnapshotter(t)
	if _, err := sn.Prepare(ctx, "broken", ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Quarantine(ctx, idOf(t, sn, "broken"), "errors remain after the repair"); err != nil {
		t.Fatal(err)
	}
	_, err := sn.Mounts(ctx, "broken")
	if !errors.Is(err, imagefs.ErrQuarantined) || !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "errors remain after the repair") {
		t.Fatalf("Mounts of a quarantined snapshot: %v", err)
	}
	if code := status.Code(errgrpc.ToGRPC(err)); code != codes.FailedPrecondition {
		t.Errorf("over gRPC: %v, want FailedPrecondition", code)
	}
}

// TestUsageOfQuarantinedSnapshot: a quarantined image is not mounted, yet
// its usage is answered (from its file and its superblock): `ctr snapshots
// usage` lists every snapshot and fails whole on one error.
func TestUsageOfQuarantinedSnapshot(t *testing.T) {
	ctx := context.Background()
	sn, _ := newTestSnapshotter(t)
	if _, err := sn.Prepare(ctx, "broken", ""); err != nil {
		t.Fatal(err)
	}
	before, err := sn.Usage(ctx, "broken")
	if err != nil {
		t.Fatal(err)
	}
	if err := sn.Quarantine(ctx, idOf(t, sn, "broken"), "errors remain after the repair"); err != nil {
		t.Fatal(err)
	}
	after, err := sn.Usage(ctx, "broken")
	if err != nil {
		t.Fatalf("usage of a quarantined snapshot: %v", err)
	}
	if after.Size <= 0 || after.Inodes != before.Inodes {
		t.Errorf("usage %+v after the quarantine, %+v before", after, before)
	}
	// An image too broken for its superblock to be read still has a size.
	if err := os.Truncate(filepath.Join(sn.snapshotDir(idOf(t, sn, "broken")), rwImage), 1<<20); err != nil {
		t.Fatal(err)
	}
	broken, err := sn.Usage(ctx, "broken")
	if err != nil || broken.Size <= 0 || broken.Inodes != 0 {
		t.Errorf("usage of a truncated quarantined image: %+v, %v", broken, err)
	}
}
