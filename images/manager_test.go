package images

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/traffic"
)

// fakeSnapshots answers for two snapshots: "ctr" (id 7, an rw image) and
// "layer" (id 3).
type fakeSnapshots struct{}

func (fakeSnapshots) SnapshotID(_ context.Context, key string) (string, error) {
	switch key {
	case "ctr":
		return "7", nil
	case "layer":
		return "3", nil
	}
	return "", errdefs.ErrNotFound
}

func (fakeSnapshots) Names(context.Context) (map[string]string, error) {
	return map[string]string{"7": "ctr", "3": "layer"}, nil
}

func (fakeSnapshots) Describe(context.Context) ([]api.ImageStatus, error) {
	return []api.ImageStatus{
		{Snapshot: "layer", Kind: "committed", ID: "3"},
		{Snapshot: "ctr", Kind: "active", ID: "7"},
	}, nil
}

func (fakeSnapshots) SnapshotOfUpper(string) string { return "" }

// events records what a mount observer is told, in order.
type events []string

func (e *events) Mounted(_ context.Context, id string, layer bool, _ *imagefs.Mounted) {
	kind := "rw"
	if layer {
		kind = "layer"
	}
	*e = append(*e, "mounted "+kind+" "+id)
}
func (e *events) Unmounting(id string) { *e = append(*e, "unmounting "+id) }
func (e *events) MountFailed(_ context.Context, id string, _ bool, err error) {
	*e = append(*e, "failed "+id+": "+err.Error())
}

func newTestManager(t *testing.T) *Manager {
	t.Helper()
	g := New(context.Background(), fakeSnapshots{}, config.Default(), &traffic.Meter{})
	t.Cleanup(g.Close)
	return g
}

// serveState puts an rw image in service without touching a filesystem:
// what Serve records, minus the EnsureFree and the window keeper.
func serveState(g *Manager, id, class string) *imageState {
	st := &imageState{id: id, m: &imagefs.Mounted{}, class: class}
	g.mu.Lock()
	g.images[id] = st
	g.mu.Unlock()
	return st
}

// TestManagerRecordsWhatIsInService: layers and rw images are in the
// record until Unmounting; an observer that comes late is told of what is
// in service and of the images start-up could not mount, and from then on
// of every change.
func TestManagerRecordsWhatIsInService(t *testing.T) {
	ctx := context.Background()
	g := newTestManager(t)
	g.ServeLayer(ctx, "3", &imagefs.Mounted{Image: "layer.img"})
	serveState(g, "7", "")
	g.MountFailed(ctx, "9", false, errors.New("bad superblock"))

	if m, layer, ok := g.Mounted("3"); !ok || !layer || m.Image != "layer.img" {
		t.Errorf("Mounted(3) = %v %v %v, want the layer", m, layer, ok)
	}
	if _, layer, ok := g.Mounted("7"); !ok || layer {
		t.Errorf("Mounted(7): layer %v ok %v, want the rw image", layer, ok)
	}
	if _, _, ok := g.Mounted("9"); ok {
		t.Error("an image that failed to mount is in service")
	}
	var ids []string
	for _, im := range g.List() {
		ids = append(ids, im.ID)
	}
	if !slices.Equal(ids, []string{"7", "3"}) {
		t.Errorf("List = %v, want the rw image, then the layer", ids)
	}

	var ev events
	g.Observe(ctx, &ev)
	slices.Sort(ev[:2]) // what is in service comes in map order
	want := events{"mounted layer 3", "mounted rw 7", "failed 9: bad superblock"}
	if !slices.Equal(ev, want) {
		t.Fatalf("observer told %q, want %q", ev, want)
	}
	ev = nil
	g.ServeLayer(ctx, "4", &imagefs.Mounted{})
	g.Unmounting("4")
	g.Unmounting("7")
	g.Unmounting("7") // twice: told once
	g.MountFailed(ctx, "10", true, errors.New("gone"))
	want = events{"mounted layer 4", "unmounting 4", "unmounting 7", "failed 10: gone"}
	if !slices.Equal(ev, want) {
		t.Errorf("observer told %q, want %q", ev, want)
	}
	if _, _, ok := g.Mounted("7"); ok {
		t.Error("image 7 still in service after Unmounting")
	}
}

// TestManagerStatusAddsActivity: the snapshotter's description, with the
// activity of each rw image in service.
func TestManagerStatusAddsActivity(t *testing.T) {
	g := newTestManager(t)
	st := serveState(g, "7", "roomy")
	st.counts.grew(4 << 20)
	st.running, st.container = true, "c1"
	out, err := g.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[1].ID != "7" {
		t.Fatalf("status %+v, want the two snapshots described", out)
	}
	if a := out[1].Activity; a.Class != "roomy" || a.State != "running" || a.Container != "c1" || a.Grows != 1 || a.GrowBytes != 4<<20 {
		t.Errorf("activity %+v", a)
	}
	if a := out[0].Activity; a.State != "" || a.Grows != 0 {
		t.Errorf("a layer has activity %+v", a)
	}
}

// TestManagerCountsDroppedFlushes: a loop device the watcher found
// dropping flushes is counted in the image's activity and the daemon's
// totals, whether it was set back or not.
func TestManagerCountsDroppedFlushes(t *testing.T) {
	g := newTestManager(t)
	serveState(g, "7", "")
	obs := g.watchObserver()
	obs.FlushesDropped("7", "/dev/loop3", nil)
	obs.FlushesDropped("7", "/dev/loop3", errors.New("stays write through"))
	obs.FlushesDropped("gone", "/dev/loop4", nil) // no longer served: totals only
	if got := g.Totals().FlushesDropped; got != 3 {
		t.Errorf("totals: %d flushes dropped, want 3", got)
	}
	out, err := g.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if a := out[1].Activity; out[1].ID != "7" || a.FlushesDropped != 2 {
		t.Errorf("image 7's activity %+v, want 2 flushes dropped", a)
	}
}

// TestManagerRefusals: what the control API and the hooks ask of an image
// the manager does not serve, or with input from outside, fails with the
// errdefs class the caller maps, before any filesystem is touched.
func TestManagerRefusals(t *testing.T) {
	ctx := context.Background()
	g := newTestManager(t)
	g.ServeLayer(ctx, "3", &imagefs.Mounted{})
	serveState(g, "7", "")
	for _, tc := range []struct {
		name string
		call func() error
		is   func(error) bool
	}{
		{"reclaim of an unknown key", func() error { _, err := g.Reclaim(ctx, "nope"); return err }, errdefs.IsNotFound},
		{"reclaim of a layer", func() error { _, err := g.Reclaim(ctx, "layer"); return err }, errdefs.IsFailedPrecondition},
		{"quota of a layer", func() error { _, err := g.SetQuota(ctx, "3", 1<<30); return err }, errdefs.IsInvalidArgument},
		{"quota of no image", func() error { _, err := g.SetQuota(ctx, "5", 1<<30); return err }, errdefs.IsNotFound},
		{"bad quota annotation", func() error {
			return g.ApplyAnnotatedQuota(ctx, "7", map[string]string{config.AnnotationQuota: "lots"})
		}, errdefs.IsInvalidArgument},
		{"class annotation that is no name", func() error {
			_, err := g.ContainerStarting(ctx, Container{SnapshotID: "7", Annotations: map[string]string{config.AnnotationClass: "../x"}})
			return err
		}, errdefs.IsInvalidArgument},
	} {
		if err := tc.call(); !tc.is(err) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// A container not on snug is no error, and has no image.
	for _, c := range []Container{{SnapshotID: "5"}, {ID: "elsewhere"}} {
		img, err := g.ContainerStopped(ctx, c)
		if err != nil || img.ID != "" {
			t.Errorf("stop of %+v: %+v, %v; want no image, no error", c, img, err)
		}
	}
}
