package images

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

// Container is what a hook or an event tells about a container. Any of
// SnapshotID, RootFS or ID identifies its image, tried in that order.
type Container struct {
	// ID is the container's id (the OCI state's id).
	ID string
	// RootFS is where its root filesystem is mounted on the host.
	RootFS string
	// Annotations are its OCI annotations; AnnotationClass picks a class.
	Annotations map[string]string
	// SnapshotID is the snapshot's id in snug's store, when known.
	SnapshotID string
}

// ContainerImage says which image a container runs on.
type ContainerImage struct {
	// ID is the snapshot id; empty when the container is not on snug.
	ID    string `json:"id,omitempty"`
	Class string `json:"class,omitempty"`
	// FreeBytes is the free space in the window after the call.
	FreeBytes int64 `json:"free_bytes,omitempty"`
}

// ContainerStarting is the prestart hook: it notes the container on its
// image, applies the class and the quota its annotations pick, and makes
// sure the window has the class's headroom free before the process starts.
// A container that is not on snug is not an error: it gets an empty
// ContainerImage.
func (g *Manager) ContainerStarting(ctx context.Context, c Container) (ContainerImage, error) {
	g.traffic.Mark()
	st, err := g.resolve(c, false)
	if err != nil || st == nil {
		return ContainerImage{}, err
	}
	if class, ok := c.Annotations[config.AnnotationClass]; ok {
		// A Kubernetes user sets this annotation: a name that cannot be a
		// class is not recorded (a class the policy lacks is, and falls
		// back to the base policy with a warning, as after a reload).
		if class != "" && !config.ValidClassName(class) {
			return ContainerImage{}, fmt.Errorf("snapshot %s: annotation %s: %.80q is not a class name: %w", st.id, config.AnnotationClass, class, errdefs.ErrInvalidArgument)
		}
		if err := g.setClass(ctx, st, class); err != nil {
			return ContainerImage{}, fmt.Errorf("snapshot %s: record class: %w", st.id, err)
		}
	}
	if c.ID != "" {
		if old := g.byContainer(c.ID); old != nil && old != st {
			old.mu.Lock()
			old.container = "" // the id now runs on another image
			old.mu.Unlock()
		}
	}
	if err := g.applyAnnotatedQuota(ctx, st, c.Annotations); err != nil {
		return ContainerImage{}, err
	}
	st.mu.Lock()
	st.container, st.running, st.startedAt = c.ID, true, time.Now()
	class := st.class
	st.mu.Unlock()
	cl := g.classOf(ctx, st)
	if _, err := st.m.EnsureFree(ctx, int64(cl.Window.Headroom)); err != nil {
		return ContainerImage{ID: st.id, Class: class}, err
	}
	free, err := st.m.Free()
	if err != nil {
		return ContainerImage{ID: st.id, Class: class}, fmt.Errorf("snapshot %s: %w", st.id, err)
	}
	return ContainerImage{ID: st.id, Class: class, FreeBytes: free}, nil
}

// ContainerStopped is the poststop hook and the task exit event: it notes
// the container stopped and, if the policy says so, schedules a reclaim of
// its image. It returns at once: the reclaim runs in the background.
func (g *Manager) ContainerStopped(ctx context.Context, c Container) (ContainerImage, error) {
	g.traffic.Mark()
	st, err := g.resolve(c, true)
	if err != nil || st == nil {
		return ContainerImage{}, err
	}
	st.mu.Lock()
	wasRunning := st.running
	reclaimed := st.lastReclaim.After(st.startedAt) && !st.startedAt.IsZero()
	st.running = false
	if c.ID != "" {
		st.container = c.ID
	}
	if st.startedAt.IsZero() {
		st.startedAt = time.Now() // seen stopping: it ran, hookless
	}
	class := st.class
	st.mu.Unlock()
	out := ContainerImage{ID: st.id, Class: class}
	if !wasRunning && reclaimed {
		return out, nil // the hook and the exit event both report one stop
	}
	if g.classOf(ctx, st).Reclaim.OnStop {
		g.scheduleReclaim(st, reasonStop, StopDelay)
	}
	return out, nil
}

// resolve finds the image in service of a container, or nil if it has
// none: by snapshot id, then (a stop) by the container id its start
// recorded, a map walk with no mount table read, then by its rootfs mount.
// A start always reads the mount: it records which image the id runs on.
func (g *Manager) resolve(c Container, stopping bool) (*imageState, error) {
	if c.SnapshotID != "" {
		return g.image(c.SnapshotID), nil
	}
	if stopping && c.ID != "" {
		if st := g.byContainer(c.ID); st != nil {
			return st, nil
		}
	}
	if c.RootFS != "" {
		st, err := g.imageOfRootfs(c.RootFS)
		if err != nil || st != nil {
			return st, err
		}
	}
	if c.ID != "" && stopping {
		return g.byContainer(c.ID), nil
	}
	return nil, nil
}

// byContainer is the image a start recorded for container id, or nil.
func (g *Manager) byContainer(id string) *imageState {
	for _, st := range g.allImages() {
		st.mu.Lock()
		match := st.container == id
		st.mu.Unlock()
		if match {
			return st
		}
	}
	return nil
}

// imageOfRootfs reads the mount at rootfs: an overlay whose upper dir, or
// a bind mount whose source, is in one of the rw images in service. It
// returns nil when rootfs is not mounted or not on snug.
func (g *Manager) imageOfRootfs(rootfs string) (*imageState, error) {
	dir, err := filepath.EvalSymlinks(rootfs)
	if err != nil {
		return nil, nil // gone already: the caller tries the container id
	}
	tbl, err := imagefs.ReadMountsBelow(dir)
	if err != nil {
		return nil, fmt.Errorf("mounts of %s: %w", dir, err)
	}
	mi, ok := tbl.At(dir) // the top one, if mounted over
	if !ok {
		return nil, nil
	}
	switch mi.FSType {
	case "overlay":
		if id := g.snaps.SnapshotOfUpper(mi.Upper); mi.Upper != "" && id != "" {
			return g.image(id), nil
		}
	case "ext4":
		for _, st := range g.allImages() {
			if st.m.Device == mi.Source {
				return st, nil
			}
		}
	}
	return nil, nil
}
