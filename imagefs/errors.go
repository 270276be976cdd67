package imagefs

import (
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/internal/errclass"
)

var (
	// ErrNotImage is returned when a path is not a regular file holding an
	// ext4 filesystem, or its superblock makes no sense.
	ErrNotImage = errclass.New("not an ext4 image", errdefs.ErrInvalidArgument)
	// ErrNotSnugImage is returned when an ext4 image has no snug balloon:
	// it was not made by Create.
	ErrNotSnugImage = errclass.New("not a snug image (no /.snug/balloon)", errdefs.ErrInvalidArgument)
	// ErrExists is returned when Create would overwrite an existing file.
	ErrExists = errclass.New("image already exists", errdefs.ErrAlreadyExists)
	// ErrQuotaTooSmall is returned when a quota is below MinQuota, or below
	// what the data of an image needs when shrinking.
	ErrQuotaTooSmall = errclass.New("quota too small", errdefs.ErrInvalidArgument)
	// ErrInUse is returned when an offline operation (check, repair, shrink)
	// finds the image attached to a loop device.
	ErrInUse = errclass.New("image is attached to a loop device", errdefs.ErrFailedPrecondition)
	// ErrNotMounted is returned when an online operation finds the image
	// not mounted.
	ErrNotMounted = errclass.New("image is not mounted", errdefs.ErrFailedPrecondition)
	// ErrHostFull is returned when the host filesystem holding the image has
	// no space left for an operation.
	ErrHostFull = errclass.New("host filesystem is full", errdefs.ErrResourceExhausted)
	// ErrToolMissing is returned when an e2fsprogs tool is not installed.
	ErrToolMissing = errclass.New("e2fsprogs tool not found (apt-get install e2fsprogs)", errdefs.ErrFailedPrecondition)
	// ErrToolFailed is returned when an external tool exits with an error
	// that is not a finding about the filesystem.
	ErrToolFailed = errclass.New("tool failed", errdefs.ErrInternal)
	// ErrBusy is returned when an image is locked by another operation and
	// the context ended before the lock came free.
	ErrBusy = errclass.New("image busy", errdefs.ErrUnavailable)
	// ErrStillAttached (an ErrBusy) is returned by Unmount when the
	// filesystem lives on after its unmount, so its loop device stays: a
	// mount namespace copied the mount (a container being created does,
	// and drops it at its pivot_root), or an overlay still holds it.
	ErrStillAttached = fmt.Errorf("still attached after its unmount: %w", ErrBusy)
	// ErrDamaged is returned by CheckClean for an image that is not clean.
	ErrDamaged = errclass.New("image damaged", errdefs.ErrDataLoss)
	// ErrQuarantined is returned for an image the error monitor took out of
	// service because a repair could not make it clean (or it broke too
	// often): its snapshot's mounts are refused until an operator acts.
	ErrQuarantined = errclass.New("image quarantined", errdefs.ErrFailedPrecondition)
)
