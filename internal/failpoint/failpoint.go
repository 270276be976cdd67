//go:build failpoints

// Package failpoint lets crash tests kill the daemon at a named step. It is
// compiled in only with the build tag failpoints (the tests' binaries);
// release builds get the no-op in off.go.
//
// With SNUG_FAILPOINT=NAME in its environment, a daemon built with the tag
// kills itself with SIGKILL when it reaches Inject(NAME): no deferred call
// runs, as when the OOM killer or an operator's kill -9 hits it.
package failpoint

import (
	"os"
	"syscall"
)

// Enabled reports whether failpoints are compiled in.
const Enabled = true

// Inject kills the process if SNUG_FAILPOINT names this point.
func Inject(name string) {
	if os.Getenv("SNUG_FAILPOINT") == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
