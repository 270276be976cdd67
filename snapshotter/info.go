package snapshotter

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/log"

	"github.com/snugfs/snug/imagefs"
)

// Stat returns the info of a snapshot by name or key.
func (s *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

// Update changes a snapshot's labels.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (newInfo snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		newInfo, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		return err
	})
	return newInfo, err
}

// Walk calls fn for every snapshot that matches the filters.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
}

// Usage is what a snapshot really costs the host. For an active snapshot it
// is measured now: the bytes allocated to its rw image file (data and ext4
// metadata, not the free space of its quota) and the inodes in use in it.
// For a committed snapshot it was measured at commit: the layer image's
// allocated bytes and the number of files it holds. A view costs nothing.
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return usage, fmt.Errorf("usage of %s: %w", key, err)
	}
	if info.Kind != snapshots.KindActive {
		return usage, nil
	}
	if s.isUnpack(id) {
		// A layer's unpack: what another differ wrote into its dirs on
		// the host (snug's differ writes nothing there).
		du, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return usage, fmt.Errorf("usage of %s: %w", key, err)
		}
		return snapshots.Usage{Size: du.Size, Inodes: du.Inodes}, nil
	}
	size, err := imagefs.Footprint(filepath.Join(s.snapshotDir(id), rwImage))
	if err != nil {
		return usage, fmt.Errorf("usage of %s: %w", key, err)
	}
	sp, err := imagefs.SpaceOf(s.upperPath(id))
	if errors.Is(err, iofs.ErrNotExist) {
		// Not mounted (quarantined, or taken offline for a repair): its
		// superblock says what the last unmount recorded, and an image
		// too broken for that still has its size. ctr snapshots usage
		// lists every snapshot, and one error fails the whole list.
		sb, serr := imagefs.ReadSuperblock(filepath.Join(s.snapshotDir(id), rwImage))
		if serr != nil {
			log.G(ctx).WithError(serr).WithField("key", key).Debug("usage: inodes unknown")
			return snapshots.Usage{Size: size}, nil
		}
		return snapshots.Usage{Size: size, Inodes: sb.Inodes - sb.FreeInodes}, nil
	}
	if err != nil {
		return usage, fmt.Errorf("usage of %s: %w", key, err)
	}
	return snapshots.Usage{Size: size, Inodes: sp.InodesUsed}, nil
}
