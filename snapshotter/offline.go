package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/failpoint"
)

// quarantineFile marks an active snapshot whose image e2fsck could not make
// clean: it is kept for an operator and never mounted again by snug. It
// holds the reason.
const quarantineFile = "quarantined"

// damagedFile marks a committed snapshot whose layer image reported
// errors; it holds the reason. The layer stays in service (its containers
// run on), and snug status shows it.
const damagedFile = "damaged"

// MarkDamaged marks the layer of committed snapshot id damaged, with the
// reason.
func (s *Snapshotter) MarkDamaged(id, reason string) error {
	if !isNumericID(id) {
		return fmt.Errorf("mark %q: not a snapshot id: %w", id, errdefs.ErrInvalidArgument)
	}
	if _, err := os.Lstat(filepath.Join(s.snapshotDir(id), layerImage)); err != nil {
		return fmt.Errorf("mark snapshot %s: no layer image: %w", id, err)
	}
	return writeMarker(filepath.Join(s.snapshotDir(id), damagedFile), reason)
}

// MountObserver learns of every image the snapshotter mounts and of every
// image it is about to unmount: the error monitor watches each. It also
// learns of the images start-up could not mount (a damaged superblock, say).
type MountObserver interface {
	Mounted(ctx context.Context, id string, layer bool, m *imagefs.Mounted)
	Unmounting(id string)
	MountFailed(ctx context.Context, id string, layer bool, err error)
}

// unmountable is an image start-up could not mount.
type unmountable struct {
	layer bool
	err   error
}

// Observe makes o the snapshotter's mount observer and tells it of every
// image mounted already.
func (s *Snapshotter) Observe(ctx context.Context, o MountObserver) {
	s.imagesMu.Lock()
	s.mountObs = o
	type img struct {
		id    string
		layer bool
		m     *imagefs.Mounted
	}
	var now []img
	for id, st := range s.images {
		now = append(now, img{id, false, st.m})
	}
	for id, m := range s.layers {
		now = append(now, img{id, true, m})
	}
	failed := s.unmountable
	s.unmountable = map[string]unmountable{}
	s.imagesMu.Unlock()
	for _, i := range now {
		o.Mounted(ctx, i.id, i.layer, i.m)
	}
	for id, f := range failed {
		o.MountFailed(ctx, id, f.layer, f.err)
	}
}

// trackLayer records a mounted read-only layer image.
func (s *Snapshotter) trackLayer(ctx context.Context, id string, m *imagefs.Mounted) {
	s.imagesMu.Lock()
	s.layers[id] = m
	o := s.mountObs
	s.imagesMu.Unlock()
	if o != nil {
		o.Mounted(ctx, id, true, m)
	}
}

// untrackLayer forgets a layer image about to be unmounted.
func (s *Snapshotter) untrackLayer(id string) {
	s.imagesMu.Lock()
	_, ok := s.layers[id]
	delete(s.layers, id)
	o := s.mountObs
	s.imagesMu.Unlock()
	if ok && o != nil {
		o.Unmounting(id)
	}
}

// MountedImage is the mounted image of snapshot id: its rw image, or its
// layer (layer true). ok is false when it has none mounted.
func (s *Snapshotter) MountedImage(id string) (m *imagefs.Mounted, layer bool, ok bool) {
	s.imagesMu.Lock()
	defer s.imagesMu.Unlock()
	if st, found := s.images[id]; found {
		return st.m, false, true
	}
	if m, found := s.layers[id]; found {
		return m, true, true
	}
	return nil, false, false
}

// Offline takes an active snapshot's image out of service, unmounted, and
// calls fn with the image file: the error monitor repairs it there. The
// container's own root mount must be gone (its task deleted), or the
// unmount fails and the image stays in service. If fn succeeds the image
// is mounted and served again; if it fails the snapshot is quarantined:
// left unmounted, marked with fn's error, and refused by Mounts until an
// operator deals with it.
func (s *Snapshotter) Offline(ctx context.Context, id string, fn func(image string) error) error {
	if !isNumericID(id) {
		return fmt.Errorf("offline %q: not a snapshot id: %w", id, errdefs.ErrInvalidArgument)
	}
	dir := s.snapshotDir(id)
	image := filepath.Join(dir, rwImage)
	if _, err := os.Lstat(image); err != nil {
		return fmt.Errorf("offline snapshot %s: no writable image: %w", id, err)
	}
	s.untrack(id)
	if m, err := imagefs.FindMount(image); err == nil {
		err := m.Unmount(ctx)
		if errors.Is(err, imagefs.ErrStillAttached) {
			// Unmounted here, but the filesystem lives on in a mount
			// namespace a container being created copied: it goes at
			// that container's pivot_root, which takes seconds when
			// many start at once. The containers of this image are
			// stopped; waiting costs nothing but the repair's time.
			err = imagefs.WaitDetached(ctx, image, m.Device, offlineDetachWait)
		}
		if err != nil {
			return errors.Join(fmt.Errorf("offline snapshot %s: %w", id, err), s.converge(ctx, id, snapshots.KindActive, nil))
		}
	} else if !errors.Is(err, imagefs.ErrNotMounted) {
		return errors.Join(fmt.Errorf("offline snapshot %s: %w", id, err), s.converge(ctx, id, snapshots.KindActive, nil))
	}
	failpoint.Inject("offline-unmounted")
	if err := fn(image); err != nil {
		if werr := writeMarker(filepath.Join(dir, quarantineFile), err.Error()); werr != nil {
			err = errors.Join(err, werr)
		}
		return fmt.Errorf("snapshot %s: %w", id, err)
	}
	return s.converge(ctx, id, snapshots.KindActive, nil)
}

// offlineDetachWait bounds the wait for an image whose filesystem lives on
// after its unmount, beyond Unmount's own.
const offlineDetachWait = 30 * time.Second

// Quarantine marks the active snapshot id's image quarantined with the
// reason and unmounts it, keeping the file: Mounts refuses the snapshot from
// then on with the reason, snug status shows it, and start-up leaves it
// unmounted. The mark is written first, so it stays when the unmount fails
// (a container's root still on the image): a second call retries it.
func (s *Snapshotter) Quarantine(ctx context.Context, id, reason string) error {
	if !isNumericID(id) {
		return fmt.Errorf("quarantine %q: not a snapshot id: %w", id, errdefs.ErrInvalidArgument)
	}
	dir := s.snapshotDir(id)
	image := filepath.Join(dir, rwImage)
	if _, err := os.Lstat(image); err != nil {
		return fmt.Errorf("quarantine snapshot %s: no writable image: %w", id, err)
	}
	if err := writeMarker(filepath.Join(dir, quarantineFile), reason); err != nil {
		return fmt.Errorf("quarantine snapshot %s: %w", id, err)
	}
	s.untrack(id)
	m, err := imagefs.FindMount(image)
	if errors.Is(err, imagefs.ErrNotMounted) {
		return nil
	}
	if err == nil {
		err = m.Unmount(ctx)
	}
	if err != nil {
		return fmt.Errorf("quarantine snapshot %s: unmount: %w", id, err)
	}
	return nil
}

// quarantined returns the reason snapshot id is quarantined, or "".
func (s *Snapshotter) quarantined(id string) string {
	return readMarker(filepath.Join(s.snapshotDir(id), quarantineFile))
}

// readMarker returns a marker file's reason ("marked" for an empty one),
// or "" when there is no marker.
func readMarker(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if r := strings.TrimSpace(string(b)); r != "" {
		return r
	}
	return "marked"
}

// writeMarker writes a small file atomically.
func writeMarker(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
