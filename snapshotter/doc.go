// Package snapshotter implements containerd's snapshots.Snapshotter on thin
// ext4 images from package imagefs, so that every container's writable
// layer is a filesystem of its own: its own quota, its own host footprint,
// its own filesystem to check and repair.
//
//   - A committed snapshot (an image layer) is a read-only ext4 image: the
//     active snapshot's thin image itself, its upper dir renamed to the
//     layer dir at commit (imagefs.ConvertToLayer), so a layer is written
//     once; mounted read-only once and shared as an overlay lower layer by
//     every snapshot above it.
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
// The life of each image in service (its class, container, window keeper,
// reclaims, quota changes, counters and status) is package images': the
// snapshotter tells its images.Manager of every image it mounts and of
// every image it is about to unmount (Serve, ServeLayer, Unmounting), and
// the daemon reaches it through Images.
//
// # Locks
//
//   - annotateMu serialises the remaking of a pristine image for its
//     container's annotations (Mounts). It is held across I/O, and across
//     calls into the images.Manager (whose locks nest inside it).
//   - pool.mu protects the pool's refill flag and its record of takes, held
//     briefly, never across I/O.
//
// Everything else the snapshotter keeps is in containerd's metadata store
// (its own transactions) and in the snapshot directories (markers written
// atomically).
//
// Example:
//
//	sn, err := snapshotter.New(ctx, cfg) // cfg from config.Load
//	mounts, err := sn.Prepare(ctx, "ctr-1", parentChainID,
//		snapshots.WithLabels(map[string]string{config.LabelMaxSize: "1073741824"}))
package snapshotter
