// Package imagefs is snug's thin image engine: a thin image is a sparse file
// holding one ext4 filesystem, attached to an autoclear loop device and
// mounted. The package owns its whole life: Create, Attach, Mount, Grow,
// Reclaim, Shrink, Stat, Check and Repair.
//
//	err := imagefs.Create(ctx, "/var/lib/snug/images/c1.img", imagefs.CreateOptions{
//		Quota: 10 << 30, Window: 256 << 20,
//	})
//	m, err := imagefs.Mount(ctx, path, dir, imagefs.MountOptions{DirectIO: true})
//	st, err := m.Stat()           // quota, window, used, footprint, swell, errors
//	res, err := m.Reclaim(ctx, imagefs.ReclaimOptions{Headroom: 256 << 20})
//
// # The packing window
//
// ext4 spreads data over its whole disk (Orlov places new directories in far
// block groups), so a sparse image swells toward its full size even when
// little is used. snug keeps allocation inside a window at the front of the
// image. Online ext4 resize needs CAP_SYS_RESOURCE, which container hosts
// often lack, so the window is not a smaller filesystem: the filesystem has
// its full quota size, and a hidden balloon file (/.snug/balloon) of
// fallocated, unwritten extents owns every free block beyond the window.
// Unwritten extents cost the sparse file nothing.
//
// The window's end is derived, never stored: it is the lowest physical
// address the balloon holds (FIEMAP). Growing punches balloon extents, lowest
// physical addresses first. Reclaim trims (FITRIM) so freed blocks become
// holes, re-inflates the balloon over all free space (fallocate over the
// balloon's whole logical range fills exactly its holes), punches the
// balloon's ranges out of the image file, then releases just the headroom.
// ext4's reserve of up to 4096 clusters is lowered to zero while inflating:
// the reserve is a count, and the blocks left for it would otherwise lie
// beyond the window and attract data.
//
// # Footprint
//
// mkfs options keep a fresh image small (see mkfs), and Create punches out
// the journal's log that placing the balloon wrote (emptyJournalLog): a
// fresh 10 GiB image costs about 480 KiB on the host, 1.3 MiB at the
// default 32 GiB ceiling (TestCeilingBenchmark). What is written stays
// allocated until trimmed; what ext4 never frees online is its metadata:
// the journal (4 MiB by default, all of it written sooner or later) and the
// inode table blocks of every inode ever used (256 bytes each).
//
// # Concurrency and crashes
//
// Operations that change an image take an flock on the image file, so the
// daemon, the CLI and hooks never run two at once on one image. Create and
// Shrink build under a temporary name and rename into place; loop devices
// are autoclear; FindMount and FindLoops rebuild the picture from sysfs and
// the mount table after a restart.
//
// # Locks
//
// What each protects, in the order they nest (a lock is only taken while
// one above it is held):
//   - Templates.mu: the templates made; held while one is made (mkfs and
//     a private mount, tens of milliseconds), so concurrent Creates of one
//     set of options make one template, and only another Create waits;
//   - the image's flock (lockImage, lockForMount): one operation that
//     changes or mounts an image at a time, across processes; held across
//     that operation's I/O, which is what it serialises (a template's own
//     is taken under Templates.mu);
//   - the per-image check lock (scrubbing): one online check of an image at
//     a time (a second FIFREEZE of a frozen filesystem fails); held across
//     the check;
//   - Watcher.armMu, then watched.fdMu or waker.mu: arming and disarming
//     fanotify marks, the watched image's descriptors, the marks by fsid;
//     held across those system calls only;
//   - Watcher.mu: the watched images; never held across I/O or a call of
//     the Observer.
package imagefs
