package config

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/imagefs"
)

// How a snapshot or a container asks for its image's quota and inode
// count: snapshot labels (`ctr run --snapshotter-label`, read at Prepare)
// and OCI annotations (Kubernetes, whose CRI passes no snapshot labels;
// read when the container starts).
const (
	// LabelMaxSize is containerd's standard per-snapshot size label, in
	// bytes: snug makes it the quota of the snapshot's thin image.
	LabelMaxSize = "containerd.io/snapshot/max-size"
	// LabelInodes sets the inode count of a snapshot's thin image: the
	// most files, directories and symlinks its container can make.
	LabelInodes = "containerd.io/snapshot/snug.inodes"
	// AnnotationMaxSize is LabelMaxSize's name and form (bytes) as an
	// annotation, as containerd PR 14070 passes it, so pods keep working if
	// containerd adopts it.
	AnnotationMaxSize = LabelMaxSize
	// AnnotationQuota is snug's own quota annotation; it takes a size with
	// a unit ("512MiB") and wins over AnnotationMaxSize.
	AnnotationQuota = "io.snugfs.quota"
	// AnnotationInodes is the annotation of a container's inode count.
	AnnotationInodes = "io.snugfs.inodes"
)

// ParseMaxSize reads a LabelMaxSize value: a decimal byte count between
// imagefs.MinQuota and imagefs.MaxSize. Anything else is an invalid argument that
// names the label, so `ctr run --snapshotter-label` shows what was wrong.
func ParseMaxSize(v string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("label %s=%.80q: want a size in bytes: %w", LabelMaxSize, v, errdefs.ErrInvalidArgument)
	}
	if n < imagefs.MinQuota || n > imagefs.MaxSize {
		return 0, fmt.Errorf("label %s=%.80q: must be between %d (32MiB) and %d (16TiB): %w",
			LabelMaxSize, v, int64(imagefs.MinQuota), int64(imagefs.MaxSize), errdefs.ErrInvalidArgument)
	}
	return n, nil
}

// ParseInodes reads an inode count given as key: a decimal number between
// imagefs.MinInodes and imagefs.MaxInodes, or an invalid argument naming key.
func ParseInodes(key, v string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < imagefs.MinInodes || n > imagefs.MaxInodes {
		return 0, fmt.Errorf("%s=%.80q: want an inode count between %d and %d: %w",
			key, v, imagefs.MinInodes, int64(imagefs.MaxInodes), errdefs.ErrInvalidArgument)
	}
	return n, nil
}

// AnnotatedQuota is the quota a container's annotations ask for, and the
// annotation that asked; ok is false when none does. A value snug cannot
// honour is an invalid argument naming the annotation.
func AnnotatedQuota(annotations map[string]string) (quota int64, key string, ok bool, err error) {
	if v, found := annotations[AnnotationQuota]; found {
		size, err := ParseSize(v)
		if err != nil {
			return 0, AnnotationQuota, true, fmt.Errorf("annotation %s=%.80q: %w: %w", AnnotationQuota, v, err, errdefs.ErrInvalidArgument)
		}
		if q := size.Bytes(); q < imagefs.MinQuota || q > imagefs.MaxSize {
			return 0, AnnotationQuota, true, fmt.Errorf("annotation %s=%.80q: must be between 32MiB and 16TiB: %w", AnnotationQuota, v, errdefs.ErrInvalidArgument)
		}
		return size.Bytes(), AnnotationQuota, true, nil
	}
	if v, found := annotations[AnnotationMaxSize]; found {
		q, err := ParseMaxSize(v)
		if err != nil {
			return 0, AnnotationMaxSize, true, fmt.Errorf("annotation: %w", err)
		}
		return q, AnnotationMaxSize, true, nil
	}
	return 0, "", false, nil
}
