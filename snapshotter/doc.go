// Package snapshotter implements containerd's snapshots.Snapshotter on thin
// ext4 images from package imagefs, so that every container's writable
// layer is a filesystem of its own: its own quota, its own host footprint,
// its own filesystem to check and repair.
//
//   - A committed snapshot (an image layer) is a compact read-only ext4
//     image, made at commit from the active snapshot's upper dir
//     (imagefs.CreateLayer), mounted read-only once and shared as an
//     overlay lower layer by every snapshot above it.
//   - An active snapshot (a container's root, or a layer being unpacked) is
//     a thin writable image (imagefs.Create) with the overlay upper and work
//     dirs inside, mounted once; a window keeper (imagefs.Keep) grows its
//     packing window ahead of the data.
//   - A view has no image: its mounts are its parents' layers.
//
// Metadata lives in containerd's own store (core/snapshots/storage, bbolt),
// as for containerd's overlayfs snapshotter. Each snapshot's files live in
// root/snapshots/<id>: rw.img or layer.img, and mnt where it is mounted.
//
// # Crash safety
//
// Each operation orders its steps so that the state a crash leaves can be
// recognised from the record and the files, and New reconciles every
// snapshot before serving (see converge): nothing is mounted twice, no
// image, loop device or mount is leaked, and images stay mounted across a
// restart so running containers do not notice it.
//
// # Locks
//
// From the outermost to the innermost: where two are held at once, the
// one higher in this list was taken first.
//   - annotateMu serialises the remaking of a pristine image for its
//     container's annotations (Mounts).
//   - imageState.op runs one long operation on an image at a time: a
//     reclaim, a quota change, the release at a stop. It is held across
//     I/O.
//   - imageState.mu protects an image's small state (class, container,
//     running, queued, removed, the times of its last grow and reclaim),
//     held briefly and never across I/O.
//   - imagesMu protects the maps of mounted rw images and layers, the
//     mount observer and the images start-up could not mount. It is never
//     held across I/O, nor while another lock is taken.
//   - pool.mu protects the pool's refill flag and its record of takes, held
//     briefly, never across I/O.
//
// Example:
//
//	sn, err := snapshotter.New(ctx, cfg) // cfg from config.Load
//	mounts, err := sn.Prepare(ctx, "ctr-1", parentChainID,
//		snapshots.WithLabels(map[string]string{snapshotter.LabelMaxSize: "1073741824"}))
package snapshotter
