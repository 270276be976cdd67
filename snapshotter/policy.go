package snapshotter

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

// LabelMaxSize is containerd's standard per-snapshot size label, in bytes:
// snug makes it the quota of the snapshot's thin image.
const LabelMaxSize = "containerd.io/snapshot/max-size"

// MaxQuota bounds the quota a label may ask for (imagefs.MaxSize).
const MaxQuota = imagefs.MaxSize

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
		mount: imagefs.MountOptions{DirectIO: cfg.Image.DirectIO, Discard: cfg.Image.Discard},
	}
}

// LabelInodes sets the inode count of a snapshot's thin image: the most
// files, directories and symlinks its container can make.
const LabelInodes = "containerd.io/snapshot/snug.inodes"

// createOptions are the image options for a snapshot with these labels:
// the policy's, with the quota from LabelMaxSize and the inode count from
// LabelInodes when they are set. The ceiling stays the policy's
// max_quota, or is the label's quota when that is higher.
func (p policy) createOptions(labels map[string]string) (imagefs.CreateOptions, error) {
	o := p.create
	if v, ok := labels[LabelInodes]; ok {
		n, err := parseInodes(LabelInodes, v)
		if err != nil {
			return o, err
		}
		o.Inodes = n
	}
	v, ok := labels[LabelMaxSize]
	if !ok {
		return o, nil
	}
	q, err := parseMaxSize(v)
	if err != nil {
		return o, err
	}
	o.Quota = q
	if o.JournalSize > q/4 {
		o.JournalSize = imagefs.MinJournal
	}
	return o, nil
}

// parseMaxSize reads a LabelMaxSize value: a decimal byte count between
// imagefs.MinQuota and MaxQuota. Anything else is an invalid argument that
// names the label, so `ctr run --snapshotter-label` shows what was wrong.
func parseMaxSize(v string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("label %s=%q: want a size in bytes: %w", LabelMaxSize, v, errdefs.ErrInvalidArgument)
	}
	if n < imagefs.MinQuota || n > MaxQuota {
		return 0, fmt.Errorf("label %s=%q: must be between %d (32MiB) and %d (16TiB): %w",
			LabelMaxSize, v, int64(imagefs.MinQuota), int64(MaxQuota), errdefs.ErrInvalidArgument)
	}
	return n, nil
}

// parseInodes reads an inode count given as key: a decimal number between
// imagefs.MinInodes and imagefs.MaxInodes, or an invalid argument naming key.
func parseInodes(key, v string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < imagefs.MinInodes || n > imagefs.MaxInodes {
		return 0, fmt.Errorf("%s=%q: want an inode count between %d and %d: %w",
			key, truncate(v, 80), imagefs.MinInodes, int64(imagefs.MaxInodes), errdefs.ErrInvalidArgument)
	}
	return n, nil
}
