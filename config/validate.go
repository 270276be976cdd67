package config

import (
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/snugfs/snug/imagefs"
)

// MinQuota, MaxQuota and MinJournal are the engine's own limits.
const (
	MinQuota   = Size(imagefs.MinQuota)
	MaxQuota   = Size(imagefs.MaxSize)
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
	if c.ContainerdAddress != "" && !filepath.IsAbs(c.ContainerdAddress) {
		return bad("containerd_address", "must be an absolute path or empty, got %q", c.ContainerdAddress)
	}
	if c.E2fsprogsDir != "" && !filepath.IsAbs(c.E2fsprogsDir) {
		return bad("e2fsprogs_dir", "must be an absolute path or empty, got %q", c.E2fsprogsDir)
	}
	if c.MetricsAddress != "" {
		if _, port, err := net.SplitHostPort(c.MetricsAddress); err != nil || port == "" {
			return bad("metrics_address", "want host:port (e.g. \"127.0.0.1:9477\") or empty, got %q", c.MetricsAddress)
		}
	}
	if err := c.Base().validate(""); err != nil {
		return err
	}
	for name, cl := range c.Classes {
		key := "policies." + name
		if !ValidClassName(name) {
			return bad(key, "a class name is letters, digits, '.', '_' and '-', at most 63")
		}
		if err := cl.validate(key + "."); err != nil {
			return err
		}
		if cl.Window.CheckInterval != c.Window.CheckInterval {
			return bad(key+".window.check_interval", "is global: set it in [window]")
		}
	}
	im := c.Image
	switch {
	case im.Quota < MinQuota:
		return bad("image.quota", "%s is below the minimum %s", im.Quota, MinQuota)
	case im.MaxQuota != 0 && im.MaxQuota < im.Quota:
		return bad("image.max_quota", "%s is below image.quota %s (0 means the quota)", im.MaxQuota, im.Quota)
	case im.MaxQuota > MaxQuota:
		return bad("image.max_quota", "%s is above the most an image can be, %s", im.MaxQuota, MaxQuota)
	case im.JournalSize < MinJournal || im.JournalSize > GiB:
		return bad("image.journal_size", "%s is outside %s..1GiB", im.JournalSize, MinJournal)
	case im.JournalSize > im.Quota/4:
		return bad("image.journal_size", "%s is more than a quarter of image.quota %s", im.JournalSize, im.Quota)
	case im.Inodes != 0 && (im.Inodes < imagefs.MinInodes || im.Inodes > imagefs.MaxInodes):
		return bad("image.inodes", "%d is outside %d..%d (0 derives it from bytes_per_inode)", im.Inodes, imagefs.MinInodes, int64(imagefs.MaxInodes))
	case im.BytesPerInode < 1024 || im.BytesPerInode > 64*MiB:
		return bad("image.bytes_per_inode", "%s is outside 1KiB..64MiB", im.BytesPerInode)
	case c.Fsck.Repair != "yes" && c.Fsck.Repair != "preen":
		return bad("fsck.repair", "must be \"yes\" or \"preen\", got %q", c.Fsck.Repair)
	case c.Fsck.Timeout < time.Second:
		return bad("fsck.timeout", "%s is below 1s", c.Fsck.Timeout)
	case c.Pool.Min < 0 || c.Pool.Min > MaxPool:
		return bad("pool.min", "%d is outside 0..%d", c.Pool.Min, MaxPool)
	case c.Pool.Max < c.Pool.Min || c.Pool.Max > MaxPool:
		return bad("pool.max", "%d is outside pool.min (%d)..%d", c.Pool.Max, c.Pool.Min, MaxPool)
	}
	return c.Fsck.validate()
}

func (f FsckPolicy) validate() error {
	oneOf := func(key, v string, allowed ...string) error {
		for _, a := range allowed {
			if v == a {
				return nil
			}
		}
		return bad(key, "must be one of %q, got %q", allowed, v)
	}
	if err := oneOf("fsck.action", f.Action, "notify", "freeze", "check", "repair"); err != nil {
		return err
	}
	if err := oneOf("fsck.monitor", f.Monitor, "auto", "fanotify", "sysfs"); err != nil {
		return err
	}
	if err := oneOf("fsck.check_method", f.CheckMethod, "auto", "reflink", "frozen"); err != nil {
		return err
	}
	switch {
	case f.MaxRepairs < 0 || f.MaxRepairs > 1000:
		return bad("fsck.max_repairs", "%d is outside 0..1000", f.MaxRepairs)
	case f.RepairWindow < time.Minute:
		return bad("fsck.repair_window", "%s is below 1m", f.RepairWindow)
	case f.ScrubInterval < 0:
		return bad("fsck.scrub_interval", "must not be negative")
	case f.ScrubInterval > 0 && f.ScrubInterval < time.Minute:
		return bad("fsck.scrub_interval", "%s is below 1m (use \"0s\" to turn it off)", f.ScrubInterval)
	}
	return nil
}

// validate checks a class's keys; prefix is "" for [window] and [reclaim]
// themselves, "policies.NAME." for a class.
func (cl Class) validate(prefix string) error {
	w, r := cl.Window, cl.Reclaim
	switch {
	case w.Initial <= 0:
		return bad(prefix+"window.initial", "must be positive")
	case w.Headroom <= 0:
		return bad(prefix+"window.headroom", "must be positive")
	case w.HeadroomRatio < 0 || w.HeadroomRatio > 10:
		return bad(prefix+"window.headroom_ratio", "%g is outside 0..10", w.HeadroomRatio)
	case w.CheckInterval < time.Millisecond || w.CheckInterval > time.Hour:
		return bad(prefix+"window.check_interval", "%s is outside 1ms..1h", w.CheckInterval)
	case w.Burst < 0 || w.Burst > time.Minute:
		return bad(prefix+"window.burst", "%s is outside 0s..1m", w.Burst)
	case r.IdleAfter < 0:
		return bad(prefix+"reclaim.idle_after", "must not be negative")
	case r.IdleAfter > 0 && r.IdleAfter < time.Second:
		return bad(prefix+"reclaim.idle_after", "%s is below 1s (use \"0s\" to turn it off)", r.IdleAfter)
	case r.MinGain < 0:
		return bad(prefix+"reclaim.min_gain", "must not be negative")
	case r.TrimAfter < 0:
		return bad(prefix+"reclaim.trim_after", "must not be negative")
	}
	return nil
}

// ValidClassName reports whether name can be a policy class: letters,
// digits, '.', '_' and '-', at most 63. Names from outside (a label, an
// OCI annotation a Kubernetes user sets) are checked with it before use.
func ValidClassName(name string) bool {
	if name == "" || len(name) > 63 {
		return false
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
		if !ok {
			return false
		}
	}
	return true
}
