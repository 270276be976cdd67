package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/snugfs/snug/imagefs"
)

// ImageStatus is one snapshot's image as `snug status` shows it.
type ImageStatus struct {
	// Snapshot is the snapshot's key or name in snug's store (containerd
	// prefixes it with the namespace and its own id).
	Snapshot string `json:"snapshot"`
	// Kind is "active" (a thin writable image) or "committed" (a layer).
	Kind string `json:"kind"`
	ID   string `json:"id"`
	imagefs.Stats
	// Problem says why the image could not be measured, if it could not.
	Problem string `json:"problem,omitempty"`
	// Damaged is why the error monitor marked a read-only layer damaged.
	Damaged string `json:"damaged,omitempty"`
	Activity
}

// Activity is what the daemon did to an rw image and knows of its
// container, since the daemon started.
type Activity struct {
	// Class is the policy class the image follows ("" for the base).
	Class     string `json:"class,omitempty"`
	Container string `json:"container,omitempty"`
	// State is "running" or "stopped" when a hook or an event said so.
	State          string     `json:"state,omitempty"`
	LastGrow       *time.Time `json:"last_grow,omitempty"`
	LastReclaim    *time.Time `json:"last_reclaim,omitempty"`
	Grows          int64      `json:"grows"`
	GrowBytes      int64      `json:"grow_bytes"`
	Reclaims       int64      `json:"reclaims"`
	ReclaimedBytes int64      `json:"reclaimed_bytes"`
	TrimmedBytes   int64      `json:"trimmed_bytes"`
	// WindowFull counts checks that found the window full before the quota.
	WindowFull int64 `json:"window_full"`
}

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
	a.Grows, a.GrowBytes = st.grows.Load(), st.growBytes.Load()
	a.Reclaims, a.ReclaimedBytes = st.reclaims.Load(), st.reclaimBytes.Load()
	a.TrimmedBytes, a.WindowFull = st.trimmedBytes.Load(), st.fulls.Load()
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
