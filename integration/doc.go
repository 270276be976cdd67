// Package integration holds snug's end-to-end tests: they run as root on the
// real kernel (loop devices, ext4, e2fsprogs) and, once the snapshotter
// exists, under a real containerd.
package integration
