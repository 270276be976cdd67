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
)

// Private mounts are the short-lived mounts imagefs makes for itself (to place
// a new image's balloon, to work on an unmounted image) on a directory made in
// the system's temporary directory. A process killed while it holds one leaves
// the image attached and mounted there; ReleaseStale undoes that.

// privatePrefixes name the directories of private mounts.
var privatePrefixes = []string{"snug-create-", "snug-mnt-"}

// privateInUse holds the private mount directories of this process.
var privateInUse sync.Map

// makePrivateDir makes a directory for a private mount; done removes it.
func makePrivateDir(prefix string) (dir string, done func(), err error) {
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, err
	}
	privateInUse.Store(dir, true)
	return dir, func() {
		os.Remove(dir)
		privateInUse.Delete(dir)
	}, nil
}

// isStalePrivate reports whether dir is a private mount directory of
// another process: one that died holding it, since an image belongs to one
// daemon and its state directory.
func isStalePrivate(dir string) bool {
	if filepath.Dir(dir) != filepath.Clean(os.TempDir()) {
		return false
	}
	base := filepath.Base(dir)
	for _, p := range privatePrefixes {
		if strings.HasPrefix(base, p) {
			_, mine := privateInUse.Load(dir)
			return !mine
		}
	}
	return false
}

// privateDirAge is how old an empty private mount directory must be to be
// garbage: a live process mounts on its directory the moment it makes it.
const privateDirAge = time.Minute

// SweepPrivateDirs removes the empty private mount directories that
// processes killed between making one and mounting on it left in the
// system's temporary directory. A directory still mounted on is not empty
// to rmdir, and stays (ReleaseStale is for those).
func SweepPrivateDirs() {
	for _, p := range privatePrefixes {
		dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), p+"*"))
		for _, dir := range dirs {
			if _, mine := privateInUse.Load(dir); mine {
				continue
			}
			if fi, err := os.Lstat(dir); err == nil && fi.IsDir() && time.Since(fi.ModTime()) > privateDirAge {
				os.Remove(dir) // fails, harmlessly, unless empty and unmounted
			}
		}
	}
}

// ReleaseStale unmounts the image at path from a private mount a killed
// process left behind, detaches its loop device and removes the directory.
// It reports whether there was one; an image mounted anywhere else is left
// alone.
func ReleaseStale(ctx context.Context, path string) (bool, error) {
	t, err := ReadMountTable()
	if err != nil {
		return false, err
	}
	return t.ReleaseStale(ctx, path)
}

// ReleaseStale is ReleaseStale, looking the image up in the table.
func (t *MountTable) ReleaseStale(ctx context.Context, path string) (bool, error) {
	m, err := t.Find(path)
	if errors.Is(err, ErrNotMounted) || errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !isStalePrivate(m.Dir) {
		return false, nil
	}
	if err := m.Unmount(ctx); err != nil {
		return false, fmt.Errorf("release %s from %s: %w", path, m.Dir, err)
	}
	if err := os.Remove(m.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return true, fmt.Errorf("release %s: %w", path, err)
	}
	return true, nil
}
