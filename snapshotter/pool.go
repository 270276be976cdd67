package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/log"

	"github.com/snugfs/snug/imagefs"
)

// poolSize is how many ready-made rw images the pool keeps. Making an
// image (a copy of its template and a new UUID) is much of what Prepare
// costs, and it sits on `ctr run`'s critical path; a taken image is
// replaced in the background. Each waiting image costs about 1 MiB of
// host disk.
const poolSize = 2

// pool keeps fresh rw images made with the policy's default options in
// root/pool, named by those options, so that an image made for an older
// policy is never handed out.
type pool struct {
	dir       string
	opts      imagefs.CreateOptions
	templates *imagefs.Templates

	// mu protects filling; refills run one at a time.
	mu      sync.Mutex
	filling bool
	wg      sync.WaitGroup
}

func newPool(ctx context.Context, root string, opts imagefs.CreateOptions, templates *imagefs.Templates) (*pool, error) {
	p := &pool{dir: filepath.Join(root, "pool"), opts: opts, templates: templates}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, err
	}
	// What a crash left half made goes, and images for another policy.
	if _, err := imagefs.RemoveTemporaries(ctx, p.dir); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), p.prefix()) || !strings.HasSuffix(e.Name(), ".img") {
			if err := os.Remove(filepath.Join(p.dir, e.Name())); err != nil {
				return nil, err
			}
		}
	}
	return p, nil
}

// prefix names the images made with the pool's options.
func (p *pool) prefix() string {
	o := p.opts
	return fmt.Sprintf("q%d-c%d-w%d-j%d-i%d-n%d-d%t-f%t-", o.Quota, o.Ceiling, o.Window, o.JournalSize, o.BytesPerInode, o.Inodes, o.DirectIO, o.FastCommit)
}

// take moves a ready image to dst and reports whether there was one. Only
// images made with exactly the options wanted are taken.
func (p *pool) take(ctx context.Context, dst string, want imagefs.CreateOptions) bool {
	if want != p.opts {
		return false
	}
	defer p.refill(ctx)
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), p.prefix()) || !strings.HasSuffix(e.Name(), ".img") {
			continue
		}
		// A rename is atomic: two takers cannot get the same image.
		if err := os.Rename(filepath.Join(p.dir, e.Name()), dst); err == nil {
			return true
		}
	}
	return false
}

// refill makes images in the background until the pool is full.
func (p *pool) refill(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.filling {
		return
	}
	p.filling = true
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer func() { p.mu.Lock(); p.filling = false; p.mu.Unlock() }()
		for n := 0; n < poolSize*2; n++ { // bounded: never spin on errors
			entries, err := os.ReadDir(p.dir)
			if err != nil || len(entries) >= poolSize || ctx.Err() != nil {
				return
			}
			name := fmt.Sprintf("%s%d.img", p.prefix(), n)
			path := filepath.Join(p.dir, name)
			if _, err := os.Lstat(path); err == nil {
				continue
			}
			if err := p.templates.Create(ctx, path, p.opts); err != nil {
				log.G(ctx).WithError(err).Warn("cannot fill the image pool; new snapshots make their own")
				return
			}
		}
	}()
}

// wait waits for a refill in progress (for Close).
func (p *pool) wait() { p.wg.Wait() }
