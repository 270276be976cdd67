// Package sharedmount puts a directory on a shared mount, so that what is
// mounted and unmounted below it propagates to the copies other mount
// namespaces hold.
//
// Every container being created copies the host's mount table into its new
// mount namespace and drops the copy at its pivot_root; with many starting
// at once that takes seconds. On a host whose mounts are private (no
// systemd, or a VM like snug's test machines) an image unmounted meanwhile
// lives on in those copies: its loop device stays, and a repair or a
// removal that needs the file free waits for them. Below a shared mount the
// copies are peers or slaves of the host's mount (runc makes them slaves),
// so the unmount reaches them at once. systemd makes every mount shared at
// boot, where this package finds nothing to do; kubelet does the same for
// its own directory.
package sharedmount

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Result says what Ensure found or did.
type Result int

const (
	// AlreadyShared: the mount holding the directory was shared already.
	AlreadyShared Result = iota
	// MadeShared: the directory is a mount point whose propagation Ensure
	// changed to shared.
	MadeShared
	// BoundShared: Ensure bind-mounted the directory onto itself and made
	// that mount shared; Undo removes it.
	BoundShared
	// Skipped: the directory is not a mount point and already has mounts
	// below it: a bind onto itself would hide them, so nothing changed.
	Skipped
)

func (r Result) String() string {
	switch r {
	case AlreadyShared:
		return "already shared"
	case MadeShared:
		return "made shared"
	case BoundShared:
		return "bound onto itself, shared"
	case Skipped:
		return "not shared: mounts below it already"
	}
	return fmt.Sprintf("Result(%d)", int(r))
}

// Ensure makes the mount that holds dir shared. A directory that is not a
// mount point is bind-mounted onto itself first, unless something is
// mounted below it already (Skipped: a restart of an older version, with
// images still mounted; the next start with nothing mounted binds it).
func Ensure(dir string) (Result, error) {
	dir, err := resolve(dir)
	if err != nil {
		return Skipped, err
	}
	holder, below, err := look(dir)
	if err != nil {
		return Skipped, fmt.Errorf("shared mount %s: %w", dir, err)
	}
	switch {
	case isShared(holder):
		return AlreadyShared, nil
	case holder.Mountpoint == dir:
		if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
			return Skipped, fmt.Errorf("shared mount %s: make shared: %w", dir, err)
		}
		return MadeShared, nil
	case below:
		return Skipped, nil
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return Skipped, fmt.Errorf("shared mount %s: bind onto itself: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		return Skipped, fmt.Errorf("shared mount %s: make shared: %w", dir, unix.Unmount(dir, unix.MNT_DETACH))
	}
	return BoundShared, nil
}

// Undo removes the bind Ensure made (BoundShared) when nothing is mounted
// below it any more; with mounts below (images a running container uses)
// it stays, for the next start to find.
func Undo(dir string) error {
	dir, err := resolve(dir)
	if err != nil {
		return err
	}
	holder, below, err := look(dir)
	if err != nil {
		return fmt.Errorf("shared mount %s: %w", dir, err)
	}
	if below || holder.Mountpoint != dir || !isBindOfItself(holder, dir) {
		return nil
	}
	// Detached: a process whose working directory is below dir (containerd
	// mounts an overlay with many layers from a thread that changed into
	// snapshots/ and never changes back) would make a plain unmount fail.
	// With nothing mounted below, the bind hides nothing: those users keep
	// the same directory.
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("shared mount %s: unmount: %w", dir, err)
	}
	return nil
}

// resolve makes dir absolute and without symlinks, as mountinfo shows it.
func resolve(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return "", fmt.Errorf("shared mount %s: %w", dir, err)
	}
	return abs, nil
}

// look returns the mount that holds dir (the last one mounted on the
// longest mount point that is dir or above it) and whether anything is
// mounted strictly below dir.
func look(dir string) (holder *mountinfo.Info, below bool, err error) {
	mounts, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, false, err
	}
	for _, m := range mounts {
		switch {
		case m.Mountpoint == dir || m.Mountpoint == "/" || strings.HasPrefix(dir, m.Mountpoint+"/"):
			// mountinfo lists mounts in the order they were made, so a
			// later one on the same point covers an earlier one.
			if holder == nil || len(m.Mountpoint) >= len(holder.Mountpoint) {
				holder = m
			}
		case strings.HasPrefix(m.Mountpoint, dir+"/"):
			below = true
		}
	}
	if holder == nil {
		return nil, false, fmt.Errorf("no mount holds it")
	}
	return holder, below, nil
}

// isShared reports whether the mount is in a peer group.
func isShared(m *mountinfo.Info) bool {
	for _, f := range strings.Fields(m.Optional) {
		if strings.HasPrefix(f, "shared:") {
			return true
		}
	}
	return false
}

// isBindOfItself reports whether the mount shows, at dir, the directory of
// its filesystem at the same path: what Ensure's bind looks like when dir is
// on the filesystem mounted at "/" (a bind's root is the directory's path
// inside its filesystem).
func isBindOfItself(m *mountinfo.Info, dir string) bool {
	return m.Root != "/" && (m.Root == dir || strings.HasSuffix(dir, m.Root))
}
