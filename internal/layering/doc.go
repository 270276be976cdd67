// Package layering holds the rule snug's packages follow, and the test
// that keeps them to it: every import runs down the layers, never up or
// across.
//
//	cmd/...                       the binaries
//	daemon, snapshotter/plugin    snug serve; containerd's built-in plugin
//	control, hooks                the control API's transport; the OCI hooks
//	snapshotter, fsck, differ     containerd's snapshots API; the error monitor; the diff applier
//	config                        the TOML policy
//	imagefs                       the thin ext4 images
//	api, control/wire             what snug reports; the control protocol
//	internal/...                  helpers
//
// Packages of one layer do not import each other (control does not import
// hooks, fsck does not import snapshotter).
package layering
