package snapshotter

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
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
func (s *Snapshotter) ContainerStarting(ctx context.Context, c Container) (ContainerImage, error) {
	s.traffic.mark()
	st, err := s.resolve(c, false)
	if err != nil || st == nil {
		return ContainerImage{}, err
	}
	if class, ok := c.Annotations[config.AnnotationClass]; ok {
		// A Kubernetes user sets this annotation: a name that cannot be a
		// class is not recorded (a class the policy lacks is, and falls
		// back to the base policy with a warning, as after a reload).
		if class != "" && !config.ValidClassName(class) {
			return ContainerImage{}, fmt.Errorf("snapshot %s: annotation %s: %q is not a class name: %w", st.id, config.AnnotationClass, truncate(class, 80), errdefs.ErrInvalidArgument)
		}
		if err := s.setClass(ctx, st, class); err != nil {
			return ContainerImage{}, fmt.Errorf("snapshot %s: record class: %w", st.id, err)
		}
	}
	if c.ID != "" {
		if old := s.byContainer(c.ID); old != nil && old != st {
			old.mu.Lock()
			old.container = "" // the id now runs on another image
			old.mu.Unlock()
		}
	}
	if err := s.applyAnnotatedQuota(ctx, st, c.Annotations); err != nil {
		return ContainerImage{}, err
	}
	st.mu.Lock()
	st.container, st.running, st.startedAt = c.ID, true, time.Now()
	class := st.class
	st.mu.Unlock()
	cl := s.classOf(ctx, st)
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
func (s *Snapshotter) ContainerStopped(ctx context.Context, c Container) (ContainerImage, error) {
	s.traffic.mark()
	st, err := s.resolve(c, true)
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
	if s.classOf(ctx, st).Reclaim.OnStop {
		s.scheduleReclaim(st, reasonStop, stopDelay)
	}
	return out, nil
}

// resolve finds the tracked image of a container, or nil if it has none:
// by snapshot id, then (a stop) by the container id its start recorded, a
// map walk with no mount table read, then by its rootfs mount. A start
// always reads the mount: it records which image the id runs on.
func (s *Snapshotter) resolve(c Container, stopping bool) (*imageState, error) {
	if c.SnapshotID != "" {
		return s.image(c.SnapshotID), nil
	}
	if stopping && c.ID != "" {
		if st := s.byContainer(c.ID); st != nil {
			return st, nil
		}
	}
	if c.RootFS != "" {
		id, err := s.snapshotOfRootfs(c.RootFS)
		if err != nil {
			return nil, err
		}
		if id != "" {
			return s.image(id), nil
		}
	}
	if c.ID != "" && stopping {
		return s.byContainer(c.ID), nil
	}
	return nil, nil
}

// byContainer is the image a start recorded for container id, or nil.
func (s *Snapshotter) byContainer(id string) *imageState {
	for _, st := range s.allImages() {
		st.mu.Lock()
		match := st.container == id
		st.mu.Unlock()
		if match {
			return st
		}
	}
	return nil
}

// snapshotOfRootfs reads the mount at rootfs: an overlay whose upper dir, or
// a bind mount whose source, is one of snug's rw images. It returns "" when
// rootfs is not mounted or not on snug.
func (s *Snapshotter) snapshotOfRootfs(rootfs string) (string, error) {
	dir, err := filepath.EvalSymlinks(rootfs)
	if err != nil {
		return "", nil // gone already: the caller tries the container id
	}
	tbl, err := imagefs.ReadMountsBelow(dir)
	if err != nil {
		return "", fmt.Errorf("mounts of %s: %w", dir, err)
	}
	mi, ok := tbl.At(dir) // the top one, if mounted over
	if !ok {
		return "", nil
	}
	switch mi.FSType {
	case "overlay":
		if mi.Upper != "" {
			return s.snapshotOfUpper(mi.Upper), nil
		}
	case "ext4":
		for _, st := range s.allImages() {
			if st.m.Device == mi.Source {
				return st.id, nil
			}
		}
	}
	return "", nil
}

// ContainerdKey returns the containerd namespace and key of snapshot id.
// containerd's metadata store names a snapshot "<namespace>/<n>/<key>" to
// the snapshotter, and a container records <key> in that namespace, so the
// pair finds the containers on an image without asking containerd for each
// container's mounts. ok is false for a snapshot named otherwise (made by
// a client of snug's own socket, or in-process).
func (s *Snapshotter) ContainerdKey(ctx context.Context, id string) (namespace, key string, ok bool, err error) {
	var name string
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		ids, err := storage.IDMap(ctx)
		name = ids[id]
		return err
	})
	if err != nil {
		return "", "", false, fmt.Errorf("snapshot %s: %w", id, err)
	}
	namespace, key, ok = splitContainerdKey(name)
	return namespace, key, ok, nil
}

// splitContainerdKey splits containerd's "<namespace>/<n>/<key>".
func splitContainerdKey(name string) (namespace, key string, ok bool) {
	parts := strings.SplitN(name, "/", 3)
	if len(parts) != 3 || parts[0] == "" || parts[2] == "" || !isNumericID(parts[1]) {
		return "", "", false
	}
	return parts[0], parts[2], true
}

// SnapshotOfMounts finds the snapshot that containerd's mounts for a
// container refer to (an overlay's upperdir or a bind mount's source).
func (s *Snapshotter) SnapshotOfMounts(mounts []mount.Mount) string {
	for _, m := range mounts {
		for _, o := range m.Options {
			if up, ok := strings.CutPrefix(o, "upperdir="); ok {
				return s.snapshotOfUpper(up)
			}
		}
		if m.Type == "bind" {
			return s.snapshotOfUpper(m.Source)
		}
	}
	return ""
}

// snapshotOfUpper maps root/snapshots/<id>/mnt/upper to id.
func (s *Snapshotter) snapshotOfUpper(upper string) string {
	rel, err := filepath.Rel(filepath.Join(s.root, "snapshots"), filepath.Clean(upper))
	if err != nil {
		return ""
	}
	parts := strings.Split(rel, string(filepath.Separator))
	if len(parts) == 3 && isNumericID(parts[0]) && parts[1] == mountDir && parts[2] == upperDir {
		return parts[0]
	}
	return ""
}

// LayersOfMounts lists the snapshots whose layers containerd's mounts for a
// container stack (an overlay's lowerdir, or a read-only bind of a layer).
func (s *Snapshotter) LayersOfMounts(mounts []mount.Mount) []string {
	var ids []string
	for _, m := range mounts {
		for _, o := range m.Options {
			if lower, ok := strings.CutPrefix(o, "lowerdir="); ok {
				for _, dir := range strings.Split(lower, ":") {
					if id := s.snapshotOfLayer(dir); id != "" {
						ids = append(ids, id)
					}
				}
			}
		}
		if m.Type == "bind" {
			if id := s.snapshotOfLayer(m.Source); id != "" {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// snapshotOfLayer maps root/snapshots/<id>/mnt/<layer dir> to id.
func (s *Snapshotter) snapshotOfLayer(dir string) string {
	rel, err := filepath.Rel(filepath.Join(s.root, "snapshots"), filepath.Clean(dir))
	if err != nil {
		return ""
	}
	parts := strings.Split(rel, string(filepath.Separator))
	if len(parts) == 3 && isNumericID(parts[0]) && parts[1] == mountDir && parts[2] == imagefs.LayerDir {
		return parts[0]
	}
	return ""
}

// truncate shortens a string from outside for a message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
