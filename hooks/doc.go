// Package hooks will hold snug's OCI prestart and poststop hooks (grow on
// demand before a container starts, reclaim when it stops) and the runc
// wrapper that adds them. Not built yet: see the policy issue.
package hooks
