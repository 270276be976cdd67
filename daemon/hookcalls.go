package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/control/wire"
	"github.com/snugfs/snug/hooks"
	"github.com/snugfs/snug/images"
)

// containerCalls is what the hooks' calls need of the snapshotter.
type containerCalls interface {
	ContainerStarting(ctx context.Context, c images.Container) (images.ContainerImage, error)
	ContainerStopped(ctx context.Context, c images.Container) (images.ContainerImage, error)
}

// hookCalls answers the calls of the OCI hooks and of snug-runc.
type hookCalls struct {
	sn containerCalls
	// policy is the policy file the daemon runs ("" if unknown): the
	// bundle create call of a wrapper that reads another one is refused.
	policy string
}

// ContainerStarting is the prestart hook's call.
func (h hookCalls) ContainerStarting(ctx context.Context, c wire.Container) (wire.ContainerImage, error) {
	img, err := h.sn.ContainerStarting(ctx, fromWire(c))
	return toWire(img), err
}

// ContainerStopped is the poststop hook's call.
func (h hookCalls) ContainerStopped(ctx context.Context, c wire.Container) (wire.ContainerImage, error) {
	img, err := h.sn.ContainerStopped(ctx, fromWire(c))
	return toWire(img), err
}

// Poststop is snug-runc's poststop hook, which sends the OCI state as it
// is: read as snug-hook reads it (a bad state is hooks.ErrBadState, an
// invalid argument), then reported as a stop.
func (h hookCalls) Poststop(ctx context.Context, state io.Reader) (wire.ContainerImage, error) {
	st, err := hooks.ReadState(state)
	if err != nil {
		return wire.ContainerImage{}, err
	}
	return h.ContainerStopped(ctx, hooks.StateContainer(st))
}

// BundleCreate is snug-runc's call on runc create and run: the poststop
// hook goes into the bundle's config.json and the container is reported
// as starting. snug-runc hands a call answered 404 (a bundle this daemon
// cannot see) or 409 (a daemon running another policy) over to the Go
// wrapper, so no other failure may keep those classes: it is answered as
// an internal error.
func (h hookCalls) BundleCreate(ctx context.Context, b wire.Bundle) (wire.ContainerImage, error) {
	if b.Policy != "" && h.policy != "" && !samePath(b.Policy, h.policy) {
		return wire.ContainerImage{}, fmt.Errorf("this daemon runs policy %s, not %s: %w", h.policy, b.Policy, errdefs.ErrConflict)
	}
	img, err := hooks.PrepareBundle(ctx, b, h.ContainerStarting)
	if err != nil && !errdefs.IsInvalidArgument(err) && !errors.Is(err, fs.ErrNotExist) {
		err = unclassed{err}
	}
	return img, err
}

// unclassed hides an error's class (it has no Unwrap): the control API
// answers it 500.
type unclassed struct{ err error }

func (u unclassed) Error() string { return u.err.Error() }

// fromWire is the snapshotter's view of a container a hook reports.
func fromWire(c wire.Container) images.Container {
	return images.Container{ID: c.ID, RootFS: c.RootFS, Annotations: c.Annotations}
}

// toWire is the answer to a hook's call.
func toWire(img images.ContainerImage) wire.ContainerImage {
	return wire.ContainerImage{ID: img.ID, Class: img.Class, FreeBytes: img.FreeBytes}
}

// samePath tells whether a and b name the same file: the same inode, or
// the same clean path when either cannot be read.
func samePath(a, b string) bool {
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	if errA == nil && errB == nil {
		return os.SameFile(fa, fb)
	}
	return filepath.Clean(a) == filepath.Clean(b)
}
