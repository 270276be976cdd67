package images

import (
	"context"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/log"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/marker"
)

// ClassFile, in a snapshot's directory, holds the policy class a label or
// an OCI annotation picked for its image, so it survives a daemon restart.
const ClassFile = "class"

// WriteClass records a snapshot's class in its directory, atomically.
func WriteClass(dir, class string) error {
	return marker.Write(filepath.Join(dir, ClassFile), class)
}

// ReadClass is the class recorded in a snapshot's directory, or "".
func ReadClass(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, ClassFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// classOf is the policy class of an image: the one it picked, or the base
// when it picked none or one the policy does not define (logged).
func (g *Manager) classOf(ctx context.Context, st *imageState) config.Class {
	st.mu.Lock()
	name := st.class
	st.mu.Unlock()
	cl, ok := g.config().Class(name)
	if !ok {
		log.G(ctx).WithField("snapshot", st.id).WithField("class", name).Warn("unknown policy class; using the base policy")
	}
	return cl
}

func (g *Manager) watchPolicy(ctx context.Context, st *imageState) imagefs.Policy {
	return windowPolicy(g.classOf(ctx, st))
}

func windowPolicy(cl config.Class) imagefs.Policy {
	return imagefs.Policy{
		Headroom:      int64(cl.Window.Headroom),
		HeadroomRatio: cl.Window.HeadroomRatio,
		Burst:         cl.Window.Burst,
		TrimAfter:     int64(cl.Reclaim.TrimAfter),
		IdleAfter:     cl.Reclaim.IdleAfter,
	}
}

// setClass records the class an OCI annotation picked for an image.
func (g *Manager) setClass(ctx context.Context, st *imageState, class string) error {
	st.mu.Lock()
	same := st.class == class
	st.class = class
	st.mu.Unlock()
	if same {
		return nil
	}
	if err := WriteClass(st.dir, class); err != nil {
		return err
	}
	g.watcher.SetPolicy(st.id, g.watchPolicy(ctx, st))
	g.applyIO(ctx, st)
	return nil
}

// applyIO puts the image's loop device in the mode its class asks for
// (image.direct_io): at its serving, when an annotation picks its class,
// and when a reload changes the policy. A device the kernel keeps buffered
// (a file that cannot take direct I/O), or one that cannot be switched, is
// logged and left as it is: the image stays in service either way.
func (g *Manager) applyIO(ctx context.Context, st *imageState) {
	want := g.classOf(ctx, st).Image.DirectIO
	st.mu.Lock()
	class, removed := st.class, st.removed
	st.mu.Unlock()
	if removed { // taken out of service since it was listed (a reload racing a removal)
		return
	}
	logger := log.G(ctx).WithFields(log.Fields{"snapshot": st.id, "class": class, "device": st.m.Device})
	// SetDirectIO reads the mode first and changes nothing when it is
	// the one wanted (the common case: one open and one ioctl).
	got, switched, err := st.m.SetDirectIO(ctx, want)
	switch {
	case err != nil:
		logger.WithError(err).Warn("cannot switch the loop device's I/O mode; left as it is")
	case got != want:
		logger.WithField("direct_io", got).Warn("the kernel kept the loop device's I/O mode (direct I/O needs an image file that takes it)")
	case switched:
		logger.WithField("direct_io", got).Info("loop device switched to the class's I/O mode")
	}
}
