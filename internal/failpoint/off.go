//go:build !failpoints

// Package failpoint lets crash tests kill the daemon at a named step; in
// release builds (no failpoints tag) Inject does nothing.
package failpoint

// Enabled reports whether failpoints are compiled in.
const Enabled = false

// Inject does nothing without the failpoints build tag.
func Inject(string) {}

// Fault returns nil without the failpoints build tag.
func Fault(string, error) error { return nil }
