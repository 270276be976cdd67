package snapshotter

import (
	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/images"
)

// policy is what the snapshotter takes from the TOML policy.
type policy struct {
	create imagefs.CreateOptions
	mount  imagefs.MountOptions
}

// policy is the image policy in force.
func (s *Snapshotter) policy() policy { return policyFrom(s.config()) }

func policyFrom(cfg config.Config) policy {
	return policy{
		create: imagefs.CreateOptions{
			Quota:         int64(cfg.Image.Quota),
			Ceiling:       int64(cfg.Image.MaxQuota),
			Window:        int64(cfg.Window.Initial),
			JournalSize:   int64(cfg.Image.JournalSize),
			BytesPerInode: int64(cfg.Image.BytesPerInode),
			Inodes:        cfg.Image.Inodes,
			DirectIO:      cfg.Image.DirectIO,
			FastCommit:    cfg.Image.FastCommit,
		},
		mount: imagefs.MountOptions{DirectIO: cfg.Image.DirectIO, Discard: cfg.Image.Discard, AsyncCommit: cfg.Image.AsyncCommit},
	}
}

// rwMountOptions is how a rw image of the policy class named class is
// mounted: the policy's options with the class's journal commit mode and
// online discard (image.async_commit, image.discard). The class's
// direct_io is not among them: the images manager switches the loop device
// to it once the image is served, whichever way the class was picked. An
// unknown class mounts as the base.
func (s *Snapshotter) rwMountOptions(class string) imagefs.MountOptions {
	cfg := s.config()
	o := policyFrom(cfg).mount
	cl, _ := cfg.Class(class)
	o.AsyncCommit, o.Discard = cl.Image.AsyncCommit, cl.Image.Discard
	return o
}

// snapshotMountOptions is how snapshot id's rw image is mounted: as the
// class recorded in its directory asks (rwMountOptions).
func (s *Snapshotter) snapshotMountOptions(id string) imagefs.MountOptions {
	return s.rwMountOptions(images.ReadClass(s.snapshotDir(id)))
}

// createOptions are the image options for a snapshot with these labels:
// the policy's, with the quota from config.LabelMaxSize and the inode count from
// config.LabelInodes when they are set. The ceiling stays the policy's
// max_quota, or is the label's quota when that is higher.
func (p policy) createOptions(labels map[string]string) (imagefs.CreateOptions, error) {
	o := p.create
	if v, ok := labels[config.LabelInodes]; ok {
		n, err := config.ParseInodes(config.LabelInodes, v)
		if err != nil {
			return o, err
		}
		o.Inodes = n
	}
	v, ok := labels[config.LabelMaxSize]
	if !ok {
		return o, nil
	}
	q, err := config.ParseMaxSize(v)
	if err != nil {
		return o, err
	}
	o.Quota = q
	if o.JournalSize > q/4 {
		o.JournalSize = imagefs.MinJournal
	}
	return o, nil
}
