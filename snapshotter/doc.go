// Package snapshotter will implement containerd's snapshots.Snapshotter on
// thin images from package imagefs: committed layers as compact read-only
// ext4 images, active snapshots as thin writable images. Not built yet: see
// the snapshotter issue.
package snapshotter
