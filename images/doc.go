// Package images keeps the daemon's life of every image the snapshotter
// has mounted: which images are in service (rw images and read-only
// layers), and for each rw image its policy class, its container, its
// window keeper (imagefs.Watcher), the reclaims scheduled on it, its quota
// changes, what was done to it (grows, reclaims, counts) and its status.
// All of it lives in one Manager, by snapshot id.
//
// The snapshotter (package snapshotter: the containerd interface and the
// images on disk) notifies a Manager as it mounts and unmounts images
// (Serve, ServeLayer, Unmounting, MountFailed) and asks it for what is in
// service (Mounted, List). The daemon calls it for the hooks and the task
// exit events (ContainerStarting, ContainerStopped), `snug status`, `snug
// reclaim` and `snug resize`; the error monitor observes it (Observe). A
// Manager never mounts, unmounts or deletes an image, and never reads the
// snapshotter's metadata store: what it needs of the snapshots it asks
// through the Snapshots interface.
//
// # Locks
//
// From the outermost to the innermost: where two are held at once, the
// one higher in this list was taken first.
//   - imageState.op runs one long operation on an image at a time: a
//     reclaim, a quota change. Unmounting takes it, so an image is never
//     unmounted under either. It is held across I/O.
//   - imageState.mu protects an image's small state (class, container,
//     running, queued, removed, the times of its last grow and reclaim),
//     held briefly and never across I/O.
//   - Manager.mu protects the maps of rw images and layers, the mount
//     observer and the images start-up could not mount. It is never held
//     across I/O, nor while another lock is taken.
//
// Example (the snapshotter makes its Manager; the daemon uses it):
//
//	sn, err := snapshotter.New(ctx, cfg)
//	mgr := sn.Images()
//	img, err := mgr.ContainerStarting(ctx, images.Container{ID: id, RootFS: rootfs})
package images
