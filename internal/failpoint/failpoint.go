//go:build failpoints

// Package failpoint lets crash tests kill the daemon at a named step. It is
// compiled in only with the build tag failpoints (the tests' binaries);
// release builds get the no-op in off.go.
//
// With SNUG_FAILPOINT=NAME in its environment, a daemon built with the tag
// kills itself with SIGKILL when it reaches Inject(NAME): no deferred call
// runs, as when the OOM killer or an operator's kill -9 hits it.
//
// Fault injects the error of a host fault the kernel cannot be made to
// produce on demand, while a file the test controls names it.
package failpoint

import (
	"os"
	"strings"
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

// Fault returns err while the file named by SNUG_FAULT_FILE exists and
// holds name on a line of its own: a host fault the kernel cannot be made
// to produce on demand (running out of loop devices), switched on and off
// by a test while the daemon runs.
func Fault(name string, err error) error {
	path := os.Getenv("SNUG_FAULT_FILE")
	if path == "" {
		return nil
	}
	b, rerr := os.ReadFile(path)
	if rerr != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == name {
			return err
		}
	}
	return nil
}
