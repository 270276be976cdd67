package config

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/snugfs/snug/imagefs"
)

// MinQuota and MinJournal are the engine's own limits.
const (
	MinQuota   = Size(imagefs.MinQuota)
	MinJournal = Size(imagefs.MinJournal)
)

type fieldError struct{ key, msg string }

func (e fieldError) Error() string { return e.key + ": " + e.msg }

func bad(key, format string, args ...any) error {
	return fieldError{key: key, msg: fmt.Sprintf(format, args...)}
}

// validate checks ranges and relations the TOML types cannot express.
func (c Config) validate() error {
	for _, p := range []struct{ key, path string }{
		{"root", c.Root}, {"address", c.Address}, {"control_address", c.ControlAddress},
	} {
		if !filepath.IsAbs(p.path) {
			return bad(p.key, "must be an absolute path, got %q", p.path)
		}
	}
	im, w := c.Image, c.Window
	switch {
	case im.Quota < MinQuota:
		return bad("image.quota", "%s is below the minimum %s", im.Quota, MinQuota)
	case im.JournalSize < MinJournal || im.JournalSize > GiB:
		return bad("image.journal_size", "%s is outside %s..1GiB", im.JournalSize, MinJournal)
	case im.JournalSize > im.Quota/4:
		return bad("image.journal_size", "%s is more than a quarter of image.quota %s", im.JournalSize, im.Quota)
	case im.BytesPerInode < 1024 || im.BytesPerInode > 64*MiB:
		return bad("image.bytes_per_inode", "%s is outside 1KiB..64MiB", im.BytesPerInode)
	case w.Initial <= 0:
		return bad("window.initial", "must be positive")
	case w.Headroom <= 0:
		return bad("window.headroom", "must be positive")
	case w.HeadroomRatio < 0 || w.HeadroomRatio > 10:
		return bad("window.headroom_ratio", "%g is outside 0..10", w.HeadroomRatio)
	case w.CheckInterval < time.Millisecond || w.CheckInterval > time.Hour:
		return bad("window.check_interval", "%s is outside 1ms..1h", w.CheckInterval)
	case c.Fsck.Repair != "yes" && c.Fsck.Repair != "preen":
		return bad("fsck.repair", "must be \"yes\" or \"preen\", got %q", c.Fsck.Repair)
	case c.Fsck.Timeout < time.Second:
		return bad("fsck.timeout", "%s is below 1s", c.Fsck.Timeout)
	}
	return nil
}
