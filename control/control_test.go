package control

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
	"github.com/snugfs/snug/snapshotter"
)

type fakeSource struct {
	images []snapshotter.ImageStatus
	err    error
}

func (f fakeSource) Status(context.Context) ([]snapshotter.ImageStatus, error) {
	return f.images, f.err
}

func serve(t *testing.T, src Source) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(src)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestStatusRoundTrip(t *testing.T) {
	roottest.Require(t) // the control API answers root only
	want := []snapshotter.ImageStatus{{Snapshot: "default/3/c1", Kind: "active", ID: "7",
		Stats: imagefs.Stats{QuotaBytes: 1 << 30, FootprintBytes: 123, Health: "ok"}}}
	got, err := NewClient(serve(t, fakeSource{images: want})).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Snapshot != "default/3/c1" || got[0].QuotaBytes != 1<<30 || got[0].FootprintBytes != 123 {
		t.Errorf("got %+v", got)
	}
}

func TestStatusErrorIsReported(t *testing.T) {
	roottest.Require(t) // the control API answers root only
	_, err := NewClient(serve(t, fakeSource{err: errors.New("metadata store closed")})).Status(context.Background())
	if err == nil || !strings.Contains(err.Error(), "metadata store closed") {
		t.Errorf("error = %v", err)
	}
}

func TestDaemonDown(t *testing.T) {
	_, err := NewClient(filepath.Join(t.TempDir(), "none.sock")).Status(context.Background())
	if !errors.Is(err, ErrDaemonDown) {
		t.Errorf("error = %v, want ErrDaemonDown", err)
	}
}
