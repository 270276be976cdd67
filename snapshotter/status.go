package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/imagefs"
)

// ImageStatus is one snapshot's image as `snug status` shows it (api.ImageStatus).
type ImageStatus = api.ImageStatus

// Activity is what the daemon did to an rw image (api.Activity).
type Activity = api.Activity

func (st *imageState) activity() Activity {
	st.mu.Lock()
	a := Activity{Class: st.class, Container: st.container}
	switch {
	case st.running:
		a.State = "running"
	case !st.startedAt.IsZero():
		a.State = "stopped"
	}
	if !st.lastGrow.IsZero() {
		t := st.lastGrow
		a.LastGrow = &t
	}
	if !st.lastReclaim.IsZero() {
		t := st.lastReclaim
		a.LastReclaim = &t
	}
	st.mu.Unlock()
	a.WindowCounts = st.counts.load()
	return a
}

// Status describes the image of every active and committed snapshot, in
// snapshot id order. Views have no image and are left out.
func (s *Snapshotter) Status(ctx context.Context) ([]ImageStatus, error) {
	var out []ImageStatus
	if err := s.walkIDs(ctx, func(info snapshots.Info, id string) {
		if info.Kind != snapshots.KindView {
			out = append(out, ImageStatus{Snapshot: info.Name, Kind: strings.ToLower(info.Kind.String()), ID: id})
		}
	}); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	// One read of the mount table for all images, not one per image.
	tbl, err := imagefs.ReadMountsBelow(filepath.Join(s.root, "snapshots"))
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	for i := range out {
		st := &out[i]
		kind := snapshots.ParseKind(st.Kind)
		image := s.imagePath(st.ID, kind)
		m, ok := tbl.MountedAt(image, s.mountPath(st.ID))
		if !ok {
			st.Stats.Path = image
			st.Problem = "not mounted"
			if reason := s.quarantined(st.ID); reason != "" {
				st.Problem = "quarantined: " + reason
			}
			continue
		}
		if kind == snapshots.KindCommitted {
			st.Damaged = readMarker(filepath.Join(s.snapshotDir(st.ID), damagedFile))
		}
		if _, err := os.Lstat(image); errors.Is(err, os.ErrNotExist) {
			st.Stats.Path = image
			st.Problem = fmt.Sprintf("%v (mounted on %s, its data goes when it is unmounted): remove the snapshot", ErrImageDeleted, m.Device)
			continue
		}
		stats, err := m.Stat()
		st.Stats = stats
		if err != nil {
			st.Problem = err.Error()
		}
		if is := s.image(st.ID); is != nil {
			st.Activity = is.activity()
		}
	}
	return out, nil
}
