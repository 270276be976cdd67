package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// TestPool hands out ready images made with the policy's options only,
// refills in the background, and drops images of another policy at start.
func TestPool(t *testing.T) {
	roottest.Require(t, "mkfs.ext4")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root := roottest.TempDir(t)
	opts := imagefs.CreateOptions{Quota: 64 << 20, Window: 32 << 20, JournalSize: imagefs.MinJournal, BytesPerInode: 16 << 10, DirectIO: true}

	stale := filepath.Join(root, "pool", "q1-w1-j1-i1-dfalse-0.img")
	os.MkdirAll(filepath.Dir(stale), 0o700)
	os.WriteFile(stale, nil, 0o600)
	tpls, err := imagefs.NewTemplates(ctx, filepath.Join(root, "templates"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := newPool(ctx, root, opts, tpls)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("image of another policy kept: %v", err)
	}
	p.refill(ctx)
	p.wait()
	if n := countImages(t, p.dir); n != poolSize {
		t.Fatalf("pool holds %d images, want %d", n, poolSize)
	}
	other := opts
	other.Quota = 128 << 20
	if p.take(ctx, filepath.Join(root, "x.img"), other) {
		t.Error("pool handed out an image made for another quota")
	}
	dst := filepath.Join(root, "taken.img")
	if !p.take(ctx, dst, opts) {
		t.Fatal("pool had nothing to take")
	}
	sb, err := imagefs.ReadSuperblock(dst)
	if err != nil || sb.Size() != opts.Quota {
		t.Fatalf("taken image: %v, size %d", err, sb.Size())
	}
	deadline := time.Now().Add(10 * time.Second)
	for countImages(t, p.dir) < poolSize && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	p.wait()
	if n := countImages(t, p.dir); n != poolSize {
		t.Errorf("pool refilled to %d images, want %d", n, poolSize)
	}
}

func countImages(t *testing.T, dir string) int {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.img"))
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}
