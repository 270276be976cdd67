package control

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"testing"

	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/hooks"
	"github.com/snugfs/snug/imagefs"
)

// TestStatusOfSentinels: every route answers by statusOf, and snug's
// sentinels reach it with their errdefs class.
func TestStatusOfSentinels(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{imagefs.ErrQuotaBelowUsage, http.StatusBadRequest},
		{fmt.Errorf("%w: %w", hooks.ErrBadBundle, fs.ErrNotExist), http.StatusBadRequest},
		{hooks.ErrBadState, http.StatusBadRequest},
		{fs.ErrNotExist, http.StatusNotFound},
		{fsck.ErrIncidentOpen, http.StatusConflict},
		{imagefs.ErrQuarantined, http.StatusConflict},
		{imagefs.ErrNotMounted, http.StatusConflict},
		{imagefs.ErrBusy, http.StatusServiceUnavailable},
		{imagefs.ErrToolFailed, http.StatusInternalServerError},
		{errors.New("anything else"), http.StatusInternalServerError},
	} {
		if got := statusOf(fmt.Errorf("snapshot 3: %w", tc.err)); got != tc.want {
			t.Errorf("%v: status %d, want %d", tc.err, got, tc.want)
		}
	}
}
