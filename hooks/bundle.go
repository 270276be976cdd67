package hooks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/internal/errclass"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/snugfs/snug/control/wire"
)

// ErrBadBundle is returned for a bundle create call that cannot be
// carried out as asked: a relative path, no snug-runc at the path given,
// or a config.json AddHooks refuses.
var ErrBadBundle = errclass.New("bad bundle", errdefs.ErrInvalidArgument)

// Bundle is a container's bundle as the runc wrapper finds it on create
// and run, with its config.json read once for every use.
type Bundle struct {
	Dir string // absolute
	ID  string // the container id, from runc's command line
	// config is config.json's content; nil if it could not be read (Err).
	config []byte
	// Err is why config.json could not be read.
	Err error
}

// OpenBundle reads dir/config.json for the container id. A file it cannot
// read is kept in Err: Container still answers, from the id and the
// default rootfs.
func OpenBundle(dir, id string) *Bundle {
	b := &Bundle{Dir: dir, ID: id}
	b.config, b.Err = readConfig(filepath.Join(dir, "config.json"))
	return b
}

// AddPoststop adds h to config.json as snug's poststop hook.
func (b *Bundle) AddPoststop(h specs.Hook) error {
	if b.Err != nil {
		return b.Err
	}
	return addHooks(filepath.Join(b.Dir, "config.json"), b.config, StageHook{StagePoststop, h})
}

// WrapperPoststop is the poststop hook the daemon adds for snug-runc at
// wrapper: snug-runc's own hook mode, which hands the OCI state to the
// daemon at control (wire.PathPoststop). It is small C and makes one
// call, so runc waits for it rather than for a detached Go process.
func WrapperPoststop(wrapper, control string) specs.Hook {
	t := HookTimeout
	return specs.Hook{Path: wrapper, Args: []string{WrapperName, "hook", StagePoststop, "--control", control}, Timeout: &t}
}

// Container is what the daemon is told of the container when it starts:
// its id, rootfs and annotations.
func (b *Bundle) Container() wire.Container {
	rootfs, annotations := rootfsIn(specs.State{ID: b.ID, Bundle: b.Dir}, b.config)
	return wire.Container{ID: b.ID, RootFS: rootfs, Annotations: annotations}
}

// PrepareBundle is the bundle create call, in the daemon: the work of
// snug-runc on create and run. It adds the poststop hook to the bundle's
// config.json (WrapperPoststop), then calls start
// (the daemon's ContainerStarting) with what config.json says of the
// container. A config.json that does not exist is fs.ErrNotExist (the
// daemon may not see the bundle: the wrapper then does the work itself);
// any other reason the hook cannot be added is ErrBadBundle, and start is
// not called.
func PrepareBundle(ctx context.Context, req wire.Bundle, start func(context.Context, wire.Container) (wire.ContainerImage, error)) (wire.ContainerImage, error) {
	if !filepath.IsAbs(req.Bundle) {
		return wire.ContainerImage{}, fmt.Errorf("%w: bundle %q is not an absolute path", ErrBadBundle, req.Bundle)
	}
	if err := executable(req.Wrapper); err != nil {
		return wire.ContainerImage{}, fmt.Errorf("%w: wrapper: %w", ErrBadBundle, err)
	}
	if !filepath.IsAbs(req.Control) {
		return wire.ContainerImage{}, fmt.Errorf("%w: control socket %q is not an absolute path", ErrBadBundle, req.Control)
	}
	b := OpenBundle(filepath.Clean(req.Bundle), req.ID)
	if err := b.AddPoststop(WrapperPoststop(req.Wrapper, req.Control)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return wire.ContainerImage{}, fmt.Errorf("bundle %s: %w", b.Dir, err)
		}
		return wire.ContainerImage{}, fmt.Errorf("%w: %s: %w", ErrBadBundle, b.Dir, err)
	}
	return start(ctx, b.Container())
}

// executable refuses a path that is not absolute or not an executable
// regular file.
func executable(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%q is not an absolute path", path)
	}
	return executableFile(path)
}

// executableFile refuses a path that is not an executable regular file.
func executableFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}
