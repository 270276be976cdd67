package snapshotter

import (
	"context"
	"errors"
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
