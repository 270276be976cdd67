package imagefs

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// sealSuffix names the seal next to an image: see Seal.
const sealSuffix = ".clean"

// Seal records, next to an image just unmounted cleanly (its loop device
// gone), the image file's identity as the host sees it: inode, size, and
// modification and change times to the nanosecond. Sealed later reports
// whether the file is untouched since, so start-up can spare the e2fsck of
// an image nothing wrote while snug was down. Any write to the file (a loop
// device, debugfs, e2fsck or resize2fs by hand, a copy put back) moves its
// mtime or ctime or its inode. Every mount breaks the seal first
// (lockForMount), so a crash while mounted leaves none.
func Seal(image string) error {
	id, err := fileIdentity(image)
	if err != nil {
		return fmt.Errorf("seal %s: %w", image, err)
	}
	tmp := image + sealSuffix + tempSuffix
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o600); err != nil {
		return fmt.Errorf("seal %s: %w", image, HostError(err))
	}
	if err := os.Rename(tmp, image+sealSuffix); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("seal %s: %w", image, err)
	}
	return nil
}

// Sealed reports whether the image carries a seal that matches the file
// as it is now.
func Sealed(image string) bool {
	b, err := os.ReadFile(image + sealSuffix)
	if err != nil || len(b) > 256 {
		return false
	}
	id, err := fileIdentity(image)
	return err == nil && strings.TrimSpace(string(b)) == id
}

// Unseal removes the image's seal, if any.
func Unseal(image string) error {
	if err := os.Remove(image + sealSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unseal %s: %w", image, err)
	}
	return nil
}

// fileIdentity is the file's inode, size, mtime and ctime.
func fileIdentity(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("ino=%d size=%d mtime=%d.%09d ctime=%d.%09d", st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec), nil
}
