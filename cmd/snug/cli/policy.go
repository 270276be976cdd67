package cli

import (
	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

// mountOptions is how the policy says images are mounted, for every command
// that mounts one (mount, and the private mounts of grow and reclaim).
func mountOptions(cfg config.Config) imagefs.MountOptions {
	return imagefs.MountOptions{DirectIO: cfg.Image.DirectIO, Discard: cfg.Image.Discard, AsyncCommit: cfg.Image.AsyncCommit}
}
