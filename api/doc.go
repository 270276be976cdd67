// Package api holds the types of what snug reports: the bodies of the
// control API's answers (`snug status`, incidents, checks, reclaims,
// resizes), the incident records the error monitor keeps on disk, and the
// results the image engine returns. The packages that produce them (imagefs,
// snapshotter, fsck) name them by alias; control, the CLI and the hooks
// read them from here. It needs only the standard library, so any client
// can import it.
package api
