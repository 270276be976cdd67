package imagefs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// WritePath is how a mounted image's writes reach the host's disk, as the
// kernel has it now.
type WritePath struct {
	// DirectIO: the loop device bypasses the host's page cache.
	DirectIO bool
	// AsyncCommit: the journal commits asynchronously (mounted with
	// journal_async_commit: MountOptions.AsyncCommit).
	AsyncCommit bool
}

// WritePath reads both with one look at the loop device (checking that it
// still holds the image file) and the options the image's ext4 instance
// lists for itself in /proc/fs/ext4/DEVICE/options.
func (m *Mounted) WritePath() (WritePath, error) {
	dev, info, err := m.openLoop()
	if err != nil {
		return WritePath{}, err
	}
	dev.Close()
	b, err := os.ReadFile(filepath.Join("/proc/fs/ext4", filepath.Base(m.Device), "options"))
	if err != nil {
		return WritePath{}, fmt.Errorf("mount options of %s: %w", m.Image, err)
	}
	return WritePath{
		DirectIO:    info.Flags&unix.LO_FLAGS_DIRECT_IO != 0,
		AsyncCommit: hasOption(string(b), "journal_async_commit"),
	}, nil
}

// AsyncCommit reports whether the mounted image's journal commits
// asynchronously (WritePath).
func (m *Mounted) AsyncCommit() (bool, error) {
	wp, err := m.WritePath()
	return wp.AsyncCommit, err
}

// hasOption reports whether an ext4 options file (one option a line, as
// /proc/fs/ext4/DEVICE/options lists them) holds option.
func hasOption(options, option string) bool {
	return slices.Contains(strings.Fields(options), option)
}
