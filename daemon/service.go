package daemon

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/snapshotter"
)

// service is what the control API serves: the snapshotter, and the error
// monitor's incidents and checks.
type service struct {
	*snapshotter.Snapshotter
	doctor *fsck.Doctor
	ctrd   *fsck.Containerd // nil without containerd
}

// Incidents lists the error monitor's incidents.
func (s service) Incidents(context.Context) ([]fsck.Incident, error) {
	return s.doctor.Incidents(), nil
}

// Check runs the online check of target's image: target is a snapshot's
// key in snug's store, a snapshot id, or a container id (looked up in
// every containerd namespace).
func (s service) Check(ctx context.Context, target string) (fsck.CheckResult, error) {
	if target == "" {
		return fsck.CheckResult{}, fmt.Errorf("check: name a container or a snapshot: %w", errdefs.ErrInvalidArgument)
	}
	id, err := s.SnapshotID(ctx, target)
	if err != nil && !errdefs.IsNotFound(err) {
		return fsck.CheckResult{}, err
	}
	if id == "" {
		if _, _, ok := s.MountedImage(target); ok {
			id = target
		}
	}
	if id == "" && s.ctrd != nil {
		if id, err = s.ctrd.SnapshotOfContainer(ctx, target); err != nil {
			return fsck.CheckResult{}, err
		}
	}
	if id == "" {
		return fsck.CheckResult{}, fmt.Errorf("check %s: no snapshot or container of that name on snug: %w", target, errdefs.ErrNotFound)
	}
	return s.doctor.Check(ctx, id)
}
