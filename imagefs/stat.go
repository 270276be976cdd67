package imagefs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/api"
)

// Stats describe an image (the control API's api.Stats).
type Stats = api.Stats

// Stat describes the image at path. A mounted image is measured live; an
// unmounted one through a private read-only mount that neither replays its
// journal nor writes anything. An image whose superblock records errors is not
// mounted at all: its figures come from the superblock and WindowBytes and
// BalloonBytes are -1 (unknown).
func Stat(ctx context.Context, path string) (Stats, error) {
	sb, err := ReadSuperblock(path)
	if err != nil {
		return Stats{}, err
	}
	st := Stats{Path: path, UUID: sb.UUIDString(), QuotaBytes: sb.Size(), CeilingBytes: sb.Size()}
	if m, err := FindMount(path); err == nil {
		err = m.stat(&st, sb)
		return st, err
	} else if !errors.Is(err, ErrNotMounted) {
		return st, err
	}
	st.Errors = sb.ErrorCount
	st.FirstError, st.LastError = sb.FirstError, sb.LastError
	if sb.HasErrors() || sb.NeedsRecov {
		fromSuperblock(&st, sb)
		return st, footprintOf(path, &st)
	}
	err = WithMount(ctx, path, MountOptions{ReadOnly: true}, func(m *Mounted) error {
		if err := m.stat(&st, sb); err != nil {
			return err
		}
		st.Mounted, st.Device, st.Mountpoint = false, "", ""
		return nil
	})
	return st, err
}

// Stat describes the mounted image.
func (m *Mounted) Stat() (Stats, error) {
	sb, err := ReadSuperblock(m.Image)
	if err != nil {
		return Stats{}, err
	}
	st := Stats{Path: m.Image, UUID: sb.UUIDString(), QuotaBytes: sb.Size(), CeilingBytes: sb.Size()}
	return st, m.stat(&st, sb)
}

func (m *Mounted) stat(st *Stats, sb *Superblock) error {
	st.Mounted, st.Device, st.Mountpoint = true, m.Device, m.Dir
	var sfs unix.Statfs_t
	if err := unix.Statfs(m.Dir, &sfs); err != nil {
		return err
	}
	// A packed layer image (CreateLayer) has no balloon: its window is all
	// of it. A converted one (ConvertToLayer) keeps the thin image's.
	var exts []extent
	f, err := os.Open(balloonPath(m.Dir))
	switch {
	case err == nil:
		exts, err = fileExtents(f)
		if err == nil {
			st.QuotaBytes, err = readQuota(f, sb.Size())
		}
		f.Close()
		if err != nil {
			return err
		}
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	bs := sfs.Bsize
	st.BalloonBytes = sizeOf(exts)
	st.WindowBytes = windowOf(exts, sb.Size())
	st.UsedBytes = max(0, int64(sfs.Blocks-sfs.Bfree)*bs-st.BalloonBytes)
	st.FreeBytes = int64(sfs.Bavail) * bs
	st.InodesTotal, st.InodesUsed = int64(sfs.Files), int64(sfs.Files-sfs.Ffree)
	st.FirstError, st.LastError = sb.FirstError, sb.LastError
	m.sysfsErrors(st)
	st.Health = health(st.Errors, false)
	return footprintOf(m.Image, st)
}

// sysfsErrors reads ext4's live error record, which the kernel updates even
// when it cannot write the superblock (after an I/O error).
func (m *Mounted) sysfsErrors(st *Stats) {
	base := filepath.Join("/sys/fs/ext4", m.sysfsName())
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(base, name))
		return strings.TrimSpace(string(b))
	}
	if n, err := strconv.ParseInt(read("sra_exceeded_retry_limit"), 10, 64); err == nil && n >= 0 {
		st.ENOSPCRetriesExceeded = n
	}
	n, err := strconv.ParseInt(read("errors_count"), 10, 64)
	if err != nil || n < 0 {
		return
	}
	st.Errors = n
}

func fromSuperblock(st *Stats, sb *Superblock) {
	st.WindowBytes, st.BalloonBytes, st.QuotaBytes = -1, -1, -1
	st.UsedBytes = (sb.Blocks - sb.FreeBlocks) * sb.BlockSize
	st.InodesTotal, st.InodesUsed = sb.Inodes, sb.Inodes-sb.FreeInodes
	st.Health = health(sb.ErrorCount, sb.NeedsRecov)
	if sb.HasErrors() {
		st.Health = "errors"
	}
}

func health(errs int64, needsRecovery bool) string {
	switch {
	case errs > 0:
		return "errors"
	case needsRecovery:
		return "needs_recovery"
	}
	return "ok"
}

func footprintOf(path string, st *Stats) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st.FootprintBytes, err = footprint(f)
	if st.UsedBytes > 0 {
		st.Swell = float64(st.FootprintBytes) / float64(st.UsedBytes)
	}
	return err
}
