// Package hooks is snug's side of a container's life: the OCI hooks and
// the runc wrapper that installs them.
//
//   - Hook runs `snug-hook hook <stage>` (or `snug hook <stage>`) with the OCI state (runtime-spec
//     specs.State) on stdin. createRuntime or prestart: the daemon gives the
//     container's window its headroom before the process starts (and applies
//     the class its io.snugfs.policy annotation picks). poststop: the daemon
//     schedules a reclaim of its image and returns at once.
//   - The runc wrapper, in the pattern of nvidia-container-runtime, is
//     snug-runc (cmd/snug-runc, C), what `ctr run --runc-binary` and a
//     containerd runtime's BinaryName option (CRI included) point at. On
//     create and run it asks the daemon to do the work: PrepareBundle adds
//     the poststop hook (WrapperPoststop: snug-runc's own hook mode) to the
//     bundle's config.json and tells the snapshotter the container starts.
//     Wrap is the same work in Go (`snug-hook wrap`), which snug-runc hands
//     over to when the daemon cannot do it; its poststop hook is detached
//     (runc does not wait for a Go process).
//
// Hook and Wrap run in cmd/snug-hook, a small binary (the standard library, the
// runtime-spec types, the policy file reader) that starts in about 2 ms,
// since container starts and stops go through it.
//
// A hook fails safe. Garbage on stdin is a usage error (exit 2, with a
// message): a runtime never sends it, so it is loud. A daemon that is down or
// that fails is only a warning (exit 0): the container starts and stops as
// it would without snug's hooks, the watcher still grows its window, and the
// daemon's task exit events still reclaim it.
package hooks
