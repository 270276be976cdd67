package imagefs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// AsyncCommit reports whether the mounted image's journal commits
// asynchronously (mounted with journal_async_commit: MountOptions.AsyncCommit),
// as the image's ext4 instance says of itself in /proc/fs/ext4/DEVICE/options,
// after checking that the loop device still holds the image file.
func (m *Mounted) AsyncCommit() (bool, error) {
	dev, _, err := m.openLoop()
	if err != nil {
		return false, err
	}
	defer dev.Close()
	b, err := os.ReadFile(filepath.Join("/proc/fs/ext4", filepath.Base(m.Device), "options"))
	if err != nil {
		return false, fmt.Errorf("mount options of %s: %w", m.Image, err)
	}
	return hasOption(string(b), "journal_async_commit"), nil
}

// hasOption reports whether an ext4 options file (one option a line, as
// /proc/fs/ext4/DEVICE/options lists them) holds option.
func hasOption(options, option string) bool {
	return slices.Contains(strings.Fields(options), option)
}
