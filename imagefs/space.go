package imagefs

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Space is what statfs tells of the filesystem that holds a directory.
type Space struct {
	// AvailBytes is what an unprivileged writer may still write.
	AvailBytes int64
	InodesUsed int64
	ReadOnly   bool
	// Fsid is the filesystem's id, as fanotify reports it in an event.
	Fsid [2]int32
}

// SpaceOf reads statfs of the filesystem that holds dir: with MountTable,
// the one place outside the image engine's own code where snug asks the
// kernel about a filesystem.
func SpaceOf(dir string) (Space, error) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		return Space{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return Space{
		AvailBytes: int64(sfs.Bavail) * sfs.Bsize,
		InodesUsed: int64(sfs.Files - sfs.Ffree),
		ReadOnly:   sfs.Flags&unix.ST_RDONLY != 0,
		Fsid:       sfs.Fsid.Val,
	}, nil
}

// Free returns the free space a container can write into now: the window's
// free blocks, less ext4's reserve.
func (m *Mounted) Free() (int64, error) {
	sp, err := SpaceOf(m.Dir)
	return sp.AvailBytes, err
}
