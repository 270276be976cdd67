package daemon

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/control"
	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/images"
	"github.com/snugfs/snug/snapshotter"
)

// service is what the control API serves (control.Service): the hooks'
// calls, the images' status, reclaims and resizes, and the error monitor's
// incidents and checks.
type service struct {
	hookCalls
	sn     *snapshotter.Snapshotter
	images *images.Manager
	doctor *fsck.Doctor
	ctrd   *fsck.Containerd // nil without containerd
}

var _ control.Service = service{}

// Status describes every image.
func (s service) Status(ctx context.Context) ([]api.ImageStatus, error) { return s.images.Status(ctx) }

// Reclaim repacks one snapshot's image now, or every one for "".
func (s service) Reclaim(ctx context.Context, snapshot string) ([]api.ReclaimOutcome, error) {
	return s.images.Reclaim(ctx, snapshot)
}

// Incidents lists the error monitor's incidents.
func (s service) Incidents(context.Context) ([]api.Incident, error) {
	return s.doctor.Incidents(), nil
}

// Check runs the online check of target's image: target is a snapshot's
// key in snug's store, a snapshot id, or a container id (looked up in
// every containerd namespace).
func (s service) Check(ctx context.Context, target string) (api.CheckResult, error) {
	id, err := s.snapshotOf(ctx, "check", target)
	if err != nil {
		return api.CheckResult{}, err
	}
	return s.doctor.Check(ctx, id)
}

// Resize changes the quota of target's image (as Check names it).
func (s service) Resize(ctx context.Context, target string, quota int64) (api.QuotaOutcome, error) {
	id, err := s.snapshotOf(ctx, "resize", target)
	if err != nil {
		return api.QuotaOutcome{}, err
	}
	out, err := s.images.SetQuota(ctx, id, quota)
	if target != id {
		out.Snapshot = target
	}
	return out, err
}

// snapshotOf is the id of the snapshot target names: a snapshot's key in
// snug's store, a snapshot id, or a container id (looked up in every
// containerd namespace).
func (s service) snapshotOf(ctx context.Context, verb, target string) (string, error) {
	if target == "" {
		return "", fmt.Errorf("%s: name a container or a snapshot: %w", verb, errdefs.ErrInvalidArgument)
	}
	id, err := s.sn.SnapshotID(ctx, target)
	if err != nil && !errdefs.IsNotFound(err) {
		return "", err
	}
	if id == "" {
		if _, _, ok := s.sn.MountedImage(target); ok {
			id = target
		}
	}
	if id == "" && s.ctrd != nil {
		if id, err = s.ctrd.SnapshotOfContainer(ctx, target); err != nil {
			return "", err
		}
	}
	if id == "" {
		return "", fmt.Errorf("%s %s: no snapshot or container of that name on snug: %w", verb, target, errdefs.ErrNotFound)
	}
	return id, nil
}
