package imagefs

import (
	"errors"
	"fmt"
)

var (
	// ErrNotImage is returned when a path is not a regular file holding an
	// ext4 filesystem, or its superblock makes no sense.
	ErrNotImage = errors.New("not an ext4 image")
	// ErrNotSnugImage is returned when an ext4 image has no snug balloon:
	// it was not made by Create.
	ErrNotSnugImage = errors.New("not a snug image (no /.snug/balloon)")
	// ErrExists is returned when Create would overwrite an existing file.
	ErrExists = errors.New("image already exists")
	// ErrQuotaTooSmall is returned when a quota is below MinQuota, or below
	// what the data of an image needs when shrinking.
	ErrQuotaTooSmall = errors.New("quota too small")
	// ErrInUse is returned when an offline operation (check, repair, shrink)
	// finds the image attached to a loop device.
	ErrInUse = errors.New("image is attached to a loop device")
	// ErrNotMounted is returned when an online operation finds the image
	// not mounted.
	ErrNotMounted = errors.New("image is not mounted")
	// ErrHostFull is returned when the host filesystem holding the image has
	// no space left for an operation.
	ErrHostFull = errors.New("host filesystem is full")
	// ErrToolMissing is returned when an e2fsprogs tool is not installed.
	ErrToolMissing = errors.New("e2fsprogs tool not found (apt-get install e2fsprogs)")
	// ErrToolFailed is returned when an external tool exits with an error
	// that is not a finding about the filesystem.
	ErrToolFailed = errors.New("tool failed")
	// ErrBusy is returned when an image is locked by another operation and
	// the context ended before the lock came free.
	ErrBusy = errors.New("image busy")
	// ErrStillAttached (an ErrBusy) is returned by Unmount when the
	// filesystem lives on after its unmount, so its loop device stays: a
	// mount namespace copied the mount (a container being created does,
	// and drops it at its pivot_root), or an overlay still holds it.
	ErrStillAttached = fmt.Errorf("still attached after its unmount: %w", ErrBusy)
	// ErrDamaged is returned by CheckClean for an image that is not clean.
	ErrDamaged = errors.New("image damaged")
)
