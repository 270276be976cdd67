package errclass

import (
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestClassSurvivesWrappingAndGRPC: a classed sentinel keeps its message,
// is itself (errors.Is), belongs to its class, and reaches a gRPC client
// with the class's code, wrapped or not.
func TestClassSurvivesWrappingAndGRPC(t *testing.T) {
	for _, tc := range []struct {
		class error
		is    func(error) bool
		code  codes.Code
	}{
		{errdefs.ErrInvalidArgument, errdefs.IsInvalidArgument, codes.InvalidArgument},
		{errdefs.ErrFailedPrecondition, errdefs.IsFailedPrecondition, codes.FailedPrecondition},
		{errdefs.ErrUnavailable, errdefs.IsUnavailable, codes.Unavailable},
		{errdefs.ErrResourceExhausted, errdefs.IsResourceExhausted, codes.ResourceExhausted},
		{errdefs.ErrDataLoss, errdefs.IsDataLoss, codes.DataLoss},
	} {
		sentinel := New("image busy", tc.class)
		if sentinel.Error() != "image busy" {
			t.Errorf("message %q", sentinel.Error())
		}
		wrapped := fmt.Errorf("snapshot 3: %w", sentinel)
		if !errors.Is(wrapped, sentinel) || !tc.is(wrapped) {
			t.Errorf("%v: not itself or not of class %v", wrapped, tc.class)
		}
		if got := status.Code(errgrpc.ToGRPC(wrapped)); got != tc.code {
			t.Errorf("%v over gRPC: code %v, want %v", wrapped, got, tc.code)
		}
	}
	if errors.Is(New("a", errdefs.ErrNotFound), errdefs.ErrInvalidArgument) {
		t.Error("a sentinel of one class is of another")
	}
}
