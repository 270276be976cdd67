package imagefs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// Templates makes new images by copying a template: one image per set of
// CreateOptions, made by Create the first time those options are asked for,
// then copied (a reflink where the host filesystem clones files, otherwise
// a copy of its data extents only, so the copy is as sparse as the
// template) and given a UUID of its own, written into its primary and
// backup superblocks as `tune2fs -U` would (setUUIDInSuperblocks; tune2fs
// -U itself for a layout that function does not handle). The UUID is what
// ext4's fsid derives from, and the error monitor tells images apart by
// it; mkfs's metadata_csum_seed keeps the change to the superblocks. The
// copy and its publication sync once. A copy costs a few milliseconds where Create runs
// mkfs.ext4 and mounts the image to place its balloon (bench:
// TestTemplateBenchmark).
//
// Images made from one template share the rest of their superblock,
// including the directory hash seed (tune2fs cannot change it, and
// debugfs changes only the primary superblock, which a repair from a
// backup would undo); templates are made afresh at each NewTemplates, so
// the seed differs across daemon starts and nodes.
type Templates struct {
	dir string

	mu    sync.Mutex // protects ready and order, and is held while a template is made
	ready map[string]string
	order []string // keys of ready, oldest first
}

// maxTemplates bounds the templates kept: every max-size label a container
// asks for has its own. Past it the oldest is deleted (about 1 MiB each).
const maxTemplates = 8

// NewTemplates keeps templates in dir, which it empties: a template made by
// an earlier version (or a crash half way) is never copied.
func NewTemplates(ctx context.Context, dir string) (*Templates, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if _, err := RemoveTemporaries(ctx, dir); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if attached, err := IsAttached(p); err != nil || attached {
			continue // a copy in use? never delete what a loop device holds
		}
		if err := os.Remove(p); err != nil {
			return nil, err
		}
	}
	return &Templates{dir: dir, ready: map[string]string{}}, nil
}

// Create makes a new image at path with options o, as imagefs.Create does,
// from the template for o.
func (t *Templates) Create(ctx context.Context, path string, o CreateOptions) error {
	return t.create(ctx, path, o, publishImage)
}

// CreateToAttach is Create for an image that is attached to a loop device
// before anything else may use it, and that nothing keeps across a crash
// unattached: the pool's premounted images (in pool/mounted, which
// start-up empties) and the image a Prepare makes for itself (in a
// snapshot directory not recorded yet, which start-up deletes). It
// does not sync the file and its directory itself: attaching does, as
// LOOP_CONFIGURE syncs the backing file (measured on this machine kind: a
// file with 8 MiB unwritten cost 8 MiB written and one cache flush as
// it was attached), so every image handed out is on the disk whole before
// its filesystem is mounted. Each sync skipped is a cache flush of the
// host's disk (bench/single-run.sh counts them).
func (t *Templates) CreateToAttach(ctx context.Context, path string, o CreateOptions) error {
	return t.create(ctx, path, o, renameImage)
}

// create is Create, with publish to put the finished temporary in place.
func (t *Templates) create(ctx context.Context, path string, o CreateOptions, publish func(tmp, path string) error) error {
	uuid, tmp, err := startCreate(path, &o)
	if err != nil {
		return err
	}
	key, tpl, err := t.template(ctx, o)
	if err != nil {
		return err
	}
	inPlace := true
	copyWithUUID := func(out *os.File) error {
		err := setUUIDInSuperblocks(out, uuid)
		if errors.Is(err, errUUIDLayout) {
			inPlace = false
			return nil
		}
		return err
	}
	err = withCopy(tpl, tmp, copyWithUUID)
	if errors.Is(err, os.ErrNotExist) {
		// The template was deleted from under us: make it again, once.
		t.forget(key)
		if _, tpl, err = t.template(ctx, o); err != nil {
			return err
		}
		err = withCopy(tpl, tmp, copyWithUUID)
	}
	if err != nil {
		os.Remove(tmp)
		t.forget(key) // made again next time, should it be the trouble
		return fmt.Errorf("create %s from %s: %w", path, tpl, HostError(err))
	}
	if !inPlace {
		if err := setUUID(ctx, tmp, uuid); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("create %s: %w", path, err)
		}
	}
	if err := publish(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// template returns the template for o and its key, making it if needed.
func (t *Templates) template(ctx context.Context, o CreateOptions) (key, path string, err error) {
	key = fmt.Sprintf("q%d-c%d-w%d-j%d-n%d-f%t", o.Quota, o.Ceiling, o.Window, o.JournalSize, o.Inodes, o.FastCommit)
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.ready[key]; ok {
		return key, p, nil
	}
	for len(t.order) >= maxTemplates {
		t.forgetLocked(t.order[0])
	}
	p := filepath.Join(t.dir, key+".img")
	os.Remove(p) // left by a Create this process did not finish
	if err := Create(ctx, p, o); err != nil {
		return "", "", fmt.Errorf("template: %w", err)
	}
	t.ready[key] = p
	t.order = append(t.order, key)
	return key, p, nil
}

// forget deletes the template of key, if there is one.
func (t *Templates) forget(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.forgetLocked(key)
}

func (t *Templates) forgetLocked(key string) {
	if p, ok := t.ready[key]; ok {
		os.Remove(p) // a copy under way has its own descriptor of it
		delete(t.ready, key)
	}
	t.order = slices.DeleteFunc(t.order, func(k string) bool { return k == key })
}

// setUUID gives an unmounted image a new UUID, in every superblock copy.
func setUUID(ctx context.Context, path, uuid string) error {
	run, err := runTool(ctx, "tune2fs", "-U", uuid, path)
	if err != nil {
		return err
	}
	if run.ExitCode != 0 {
		return fmt.Errorf("new UUID for %s: %w", path, run.failure("tune2fs"))
	}
	return nil
}
