package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

// AnnotationSource looks up the OCI annotations of the container in
// namespace whose root is containerd's snapshot key: nil, nil when no
// container has it, an empty map for a container with none (so the image
// is not looked up again).
type AnnotationSource func(ctx context.Context, namespace, key string) (map[string]string, error)

// SetAnnotationSource lets the snapshotter read a container's annotations
// from containerd when containerd asks for its root's mounts, which it does
// when it creates the task, before the root is mounted: the quota and the
// inode count the annotations ask for are applied then, with or without
// snug's hooks.
func (s *Snapshotter) SetAnnotationSource(src AnnotationSource) {
	s.annotations.Store(&src)
}

// applyStartAnnotations applies the quota and inode annotations of the
// container whose root is the active snapshot id (containerd's name for it
// is name), once per image. The inode count of an image is fixed when it is
// made, so an image asked for another count is made again, while its upper
// directory is empty and no overlay holds it: that is, before the
// container's first start. Later, a different count is refused.
func (s *Snapshotter) applyStartAnnotations(ctx context.Context, id, name string, parentIDs []string) error {
	srcp := s.annotations.Load()
	if srcp == nil || *srcp == nil || s.images.Annotated(id) {
		return nil
	}
	if _, layer, ok := s.images.Mounted(id); !ok || layer {
		return nil
	}
	ann, err := s.containerAnnotations(ctx, *srcp, id, name)
	if err != nil {
		// containerd answers its own call's lookup; if it cannot, the hook
		// still applies the quota at start.
		log.G(ctx).WithError(err).WithField("snapshot", id).Warn("annotations of the container not read")
		return nil
	}
	if ann == nil {
		return nil // no container on it (yet): an unpack, a view by hand
	}
	// One at a time, and once: two Mounts calls for one root must not
	// both make its image again.
	s.annotateMu.Lock()
	defer s.annotateMu.Unlock()
	m, layer, ok := s.images.Mounted(id)
	if !ok || layer || s.images.Annotated(id) {
		return nil
	}
	if v, found := ann[config.AnnotationInodes]; found {
		n, err := config.ParseInodes("annotation "+config.AnnotationInodes, v)
		if err != nil {
			return err
		}
		if err := s.ensureInodes(ctx, id, m, name, n, parentIDs); err != nil {
			return fmt.Errorf("annotation %s: %w", config.AnnotationInodes, err)
		}
		if _, _, ok := s.images.Mounted(id); !ok {
			return fmt.Errorf("snapshot %s: not served after its image was made again: %w", id, errdefs.ErrUnavailable)
		}
	}
	if err := s.images.ApplyAnnotatedQuota(ctx, id, ann); err != nil {
		return err
	}
	s.images.SetAnnotated(id)
	return nil
}

// containerAnnotations returns the annotations snug acts on (quota,
// maximum size, inodes) of the container whose root is rw snapshot id
// (containerd's name for it is name), nil when no container is on it. They
// are read from containerd once, and kept: an image the error monitor
// repaired is served anew and gets them again at its restart's Mounts,
// without a call back into containerd while containerd waits for this one
// (40-200 ms under make bench-fsck's load). A container's annotations are
// part of its spec, fixed when it is created.
func (s *Snapshotter) containerAnnotations(ctx context.Context, src AnnotationSource, id, name string) (map[string]string, error) {
	if ann, ok := s.annotated.Load(id); ok {
		return ann.(map[string]string), nil
	}
	ns, key, ok := splitContainerdKey(name)
	if !ok {
		return nil, nil
	}
	all, err := src(ctx, ns, key)
	if err != nil || all == nil {
		return nil, err
	}
	ann := map[string]string{}
	for _, k := range []string{config.AnnotationQuota, config.AnnotationMaxSize, config.AnnotationInodes} {
		if v, ok := all[k]; ok {
			ann[k] = v
		}
	}
	s.annotated.Store(id, ann)
	return ann, nil
}

// ensureInodes makes the rw image m of snapshot id (named name) again with
// n inodes, unless it was made for n already. Only an image nothing was
// written to can be made again.
func (s *Snapshotter) ensureInodes(ctx context.Context, id string, m *imagefs.Mounted, name string, n int64, parentIDs []string) error {
	if asked, err := m.InodesAsked(); err != nil {
		return err
	} else if asked == n {
		return nil
	}
	upper := s.upperPath(id)
	entries, err := os.ReadDir(upper)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", id, err)
	}
	used, err := s.imagesInUse()
	if err != nil {
		return err
	}
	if len(entries) > 0 || used[id] {
		return fmt.Errorf("snapshot %s holds data already, and ext4 fixes an image's inode count when it is made: %w", id, errdefs.ErrFailedPrecondition)
	}
	quota, err := m.Quota()
	if err != nil {
		return err
	}
	var info snapshots.Info
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, name)
		return err
	}); err != nil {
		return err
	}
	o, err := s.policy().createOptions(info.Labels)
	if err != nil {
		return err
	}
	o.Quota, o.Inodes = quota, n
	var made error
	err = s.Offline(ctx, id, func(image string) error {
		// A failure here keeps the image as it was: it is no damage.
		tmp := image + ".inodes" + imagefs.TempSuffix // start-up deletes what a crash leaves
		os.Remove(tmp)
		if made = s.templates.Create(ctx, tmp, o); made != nil {
			return nil
		}
		if made = os.Rename(tmp, image); made != nil {
			os.Remove(tmp)
		}
		return nil
	})
	if err = errors.Join(made, err); err != nil {
		return fmt.Errorf("snapshot %s: make its image again: %w", id, err)
	}
	if len(parentIDs) > 0 {
		// As at Prepare: the new upper dir takes the owner of the parent's root.
		if err := chownLike(upper, s.layerPath(parentIDs[0])); err != nil {
			return fmt.Errorf("snapshot %s: %w", id, err)
		}
	}
	log.G(ctx).WithField("snapshot", id).WithField("inodes", n).Info("image made again for the container's inode count")
	return nil
}
