package imagefs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/api"
)

// Ways Scrub takes a consistent view of a mounted image.
const (
	// ScrubAuto picks ScrubReflink where the host filesystem can clone
	// the image file, ScrubFrozen elsewhere.
	ScrubAuto = "auto"
	// ScrubReflink freezes the filesystem only while its image file is
	// cloned (FICLONE: XFS, btrfs), then checks the clone.
	ScrubReflink = "reflink"
	// ScrubFrozen checks the image itself and keeps the filesystem frozen
	// until e2fsck is done.
	ScrubFrozen = "frozen"
	// ScrubReadOnly checks a filesystem that is read-only already (a
	// layer, or an image ext4 turned read-only after an error): nothing
	// writes to it, so nothing needs freezing.
	ScrubReadOnly = "read-only"
)

// ScrubResult is an online check of a mounted image (api.ScrubResult).
type ScrubResult = api.ScrubResult

// Scrub checks a mounted image without unmounting it: e2scrub's idea
// without LVM. A frozen ext4 has its journal checkpointed and its writers
// held, so its image file is a consistent filesystem for `e2fsck -fn`. A
// copy taken without freezing is not (it looks clean to e2fsck even when
// torn), so Scrub always freezes a writable image: for the whole check
// (ScrubFrozen), or only while a reflink clone is taken (ScrubReflink).
// Findings are in the result; the error is for a check that could not run.
// Checks of one image run one at a time (a second FIFREEZE of a frozen
// filesystem fails).
func (m *Mounted) Scrub(ctx context.Context, method string) (ScrubResult, error) {
	mu, _ := scrubbing.LoadOrStore(m.Image, new(sync.Mutex))
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	return m.scrub(ctx, method)
}

// scrubbing holds a *sync.Mutex per image path, held while it is checked
// online; Unmount drops it.
var scrubbing sync.Map

func (m *Mounted) scrub(ctx context.Context, method string) (ScrubResult, error) {
	if method == "" || method == ScrubAuto {
		method = ScrubFrozen
		if canReflink(filepath.Dir(m.Image)) {
			method = ScrubReflink
		}
	}
	if m.ReadOnly || m.readOnlyNow() {
		method = ScrubReadOnly
	}
	switch method {
	case ScrubReadOnly:
		res, err := e2fsck(ctx, m.Image, "check", "-f", "-n")
		return ScrubResult{FsckResult: res, Method: method, JournalSkipped: journalSkipped(res)}, err
	case ScrubFrozen:
		start := time.Now()
		if err := freeze(m.Dir); err != nil {
			if errors.Is(err, unix.EROFS) { // ext4 stopped it after an error
				return m.scrub(ctx, ScrubReadOnly)
			}
			return ScrubResult{Method: method}, fmt.Errorf("scrub %s: %w", m.Image, err)
		}
		res, err := e2fsck(ctx, m.Image, "check", "-f", "-n")
		thawErr := thaw(m.Dir)
		out := ScrubResult{FsckResult: res, Method: method, Frozen: time.Since(start)}
		return out, errors.Join(err, thawErr)
	case ScrubReflink:
		clone := filepath.Join(filepath.Dir(m.Image), ".scrub-"+filepath.Base(m.Image))
		defer os.Remove(clone)
		start := time.Now()
		if err := freeze(m.Dir); err != nil {
			if errors.Is(err, unix.EROFS) {
				return m.scrub(ctx, ScrubReadOnly)
			}
			return ScrubResult{Method: method}, fmt.Errorf("scrub %s: %w", m.Image, err)
		}
		cloneErr := reflink(m.Image, clone)
		thawErr := thaw(m.Dir)
		frozen := time.Since(start)
		if err := errors.Join(cloneErr, thawErr); err != nil {
			return ScrubResult{Method: method, Frozen: frozen}, fmt.Errorf("scrub %s: %w", m.Image, err)
		}
		res, err := e2fsck(ctx, clone, "check", "-f", "-n")
		return ScrubResult{FsckResult: res, Method: method, Frozen: frozen}, err
	}
	return ScrubResult{}, fmt.Errorf("scrub %s: unknown method %q (want %s, %s or %s)", m.Image, method, ScrubAuto, ScrubReflink, ScrubFrozen)
}

// Thaw thaws the image's filesystem if it is frozen: a daemon that died
// during a Scrub leaves it frozen, with every writer blocked. Thawing a
// filesystem that is not frozen is not an error.
func (m *Mounted) Thaw() error {
	if err := thaw(m.Dir); err != nil && !errors.Is(err, unix.EINVAL) {
		return err
	}
	return nil
}

// Stopped reports whether ext4 stopped the image after an error: mounted
// writable, read-only now (errors=remount-ro turns it so).
func (m *Mounted) Stopped() bool { return !m.ReadOnly && m.readOnlyNow() }

// readOnlyNow reports whether the filesystem is read-only at the moment.
// After an error, errors=remount-ro aborts the journal and stops writes:
// older kernels set the superblock read-only, which statfs shows; newer
// ones (6.x) set ext4's emergency read-only flag instead, which statfs
// does not show and ext4's options do ("emergency_ro", and "shutdown"
// after a forced shutdown): /proc/fs/ext4/<device>/options, a few hundred
// bytes, where the mount table's line says the same after a read of all
// of it. The pipeline asks every few milliseconds while it waits for ext4
// to stop an image.
func (m *Mounted) readOnlyNow() bool {
	var sfs unix.Statfs_t
	if unix.Statfs(m.Dir, &sfs) == nil && sfs.Flags&unix.ST_RDONLY != 0 {
		return true
	}
	if b, err := os.ReadFile(filepath.Join("/proc/fs/ext4", m.sysfsName(), "options")); err == nil {
		return stoppedOptions(strings.Join(strings.Fields(string(b)), ","))
	}
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(m.Dir))
	if err != nil || len(infos) == 0 {
		return false
	}
	return stoppedOptions(infos[len(infos)-1].VFSOptions)
}

// stoppedOptions reports whether ext4's superblock options say it stopped
// writing: read-only, emergency read-only, or shut down.
func stoppedOptions(opts string) bool {
	for _, o := range strings.Split(opts, ",") {
		switch o {
		case "ro", "emergency_ro", "shutdown":
			return true
		}
	}
	return false
}

func journalSkipped(r FsckResult) bool {
	return strings.Contains(r.Output, "skipping journal recovery")
}

// reflinkByDev caches, per host filesystem (st_dev), whether it clones
// files (FICLONE).
var reflinkByDev sync.Map

// canReflink probes once per host filesystem whether files in dir can be
// cloned.
func canReflink(dir string) bool {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return false
	}
	if v, ok := reflinkByDev.Load(st.Dev); ok {
		return v.(bool)
	}
	ok := probeReflink(dir)
	reflinkByDev.Store(st.Dev, ok)
	return ok
}

func probeReflink(dir string) bool {
	src, err := os.CreateTemp(dir, ".reflink-probe-")
	if err != nil {
		return false
	}
	defer os.Remove(src.Name())
	defer os.Remove(src.Name() + ".clone")
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return false
	}
	return reflink(src.Name(), src.Name()+".clone") == nil
}

// reflink clones src to a new file dst (FICLONE): it shares src's blocks,
// so it takes milliseconds whatever the size.
func reflink(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		return fmt.Errorf("FICLONE %s: %w", src, err)
	}
	return nil
}

// SysfsDir is ext4's sysfs directory of the mounted filesystem
// (/sys/fs/ext4/loopN): its live error record and counters.
func (m *Mounted) SysfsDir() string { return filepath.Join("/sys/fs/ext4", m.sysfsName()) }
