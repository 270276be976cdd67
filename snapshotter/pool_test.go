package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
	"github.com/snugfs/snug/internal/traffic"
)

var (
	poolTestOptions = imagefs.CreateOptions{Quota: 64 << 20, Window: 32 << 20, JournalSize: imagefs.MinJournal, BytesPerInode: 16 << 10, DirectIO: true}
	poolTestMount   = imagefs.MountOptions{DirectIO: true}
)

// poolTestPolicy is a pool policy with these bounds and the test images'
// mount options.
func poolTestPolicy(bounds config.PoolPolicy) poolPolicy {
	return poolPolicy{bounds: bounds, mount: poolTestMount, headroom: 8 << 20}
}

// newTestPool makes a pool in a new root with the given bounds.
func newTestPool(t *testing.T, ctx context.Context, bounds config.PoolPolicy) (*pool, string) {
	t.Helper()
	root := roottest.TempDir(t)
	tpls, err := imagefs.NewTemplates(ctx, filepath.Join(root, "templates"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := newPool(ctx, root, poolTestOptions, poolTestPolicy(bounds), tpls, &traffic.Meter{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.wait)
	return p, root
}

// TestPool hands out ready images made with the policy's options only,
// refills in the background, and drops images of another policy at start.
func TestPool(t *testing.T) {
	roottest.Require(t, "mkfs.ext4")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root := roottest.TempDir(t)
	stale := filepath.Join(root, "pool", "q1-w1-j1-i1-dfalse-0.img")
	os.MkdirAll(filepath.Dir(stale), 0o700)
	os.WriteFile(stale, nil, 0o600)
	tpls, err := imagefs.NewTemplates(ctx, filepath.Join(root, "templates"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := newPool(ctx, root, poolTestOptions, poolTestPolicy(config.PoolPolicy{Min: 2, Max: 2}), tpls, &traffic.Meter{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.wait()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("image of another policy kept: %v", err)
	}
	p.refill(ctx)
	p.wait()
	if n := countImages(t, p.dir); n != 2 {
		t.Fatalf("pool holds %d images, want 2", n)
	}
	other := poolTestOptions
	other.Quota = 128 << 20
	if _, ok := p.take(ctx, filepath.Join(root, "x.img"), other, poolTestMount); ok {
		t.Error("pool handed out an image made for another quota")
	}
	dst := filepath.Join(root, "taken.img")
	if _, ok := p.take(ctx, dst, poolTestOptions, poolTestMount); !ok {
		t.Fatal("pool had nothing to take")
	}
	sb, err := imagefs.ReadSuperblock(dst)
	if err != nil || sb.Size() != poolTestOptions.Quota {
		t.Fatalf("taken image: %v, size %d", err, sb.Size())
	}
	waitForImages(t, p, 2)
}

// TestPoolFollowsDemand: after a burst of takes the pool holds what the
// burst took, up to pool.max; once the burst is forgotten it shrinks back
// to pool.min; a reload's bounds apply at the next refill.
func TestPoolFollowsDemand(t *testing.T) {
	roottest.Require(t, "mkfs.ext4")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, root := newTestPool(t, ctx, config.PoolPolicy{Min: 1, Max: 6})
	p.refill(ctx)
	p.wait()
	if n := countImages(t, p.dir); n != 1 {
		t.Fatalf("an idle pool holds %d images, want pool.min 1", n)
	}
	burst := func(n int, name string) {
		for i := range n {
			p.take(ctx, filepath.Join(root, fmt.Sprintf("%s-%d.img", name, i)), poolTestOptions, poolTestMount)
		}
	}
	burst(4, "a")
	waitForImages(t, p, 4)
	burst(9, "b")
	waitForImages(t, p, 6) // pool.max

	// Two minutes on, the bursts are forgotten.
	p.wait()
	p.now = func() time.Time { return time.Now().Add(demandMemory + time.Second) }
	p.refill(ctx)
	waitForImages(t, p, 1)

	setBounds(p, config.PoolPolicy{Min: 3, Max: 3})
	p.refill(ctx)
	waitForImages(t, p, 3)
}

// waitForImages waits for the pool's refills to settle at want images.
func waitForImages(t *testing.T, p *pool, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for countImages(t, p.dir) != want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	p.wait()
	if n := countImages(t, p.dir); n != want {
		t.Fatalf("pool holds %d images, want %d", n, want)
	}
}

func TestPoolSize(t *testing.T) {
	at := func(ms ...int) []time.Time {
		var out []time.Time
		base := time.Unix(1000, 0)
		for _, m := range ms {
			out = append(out, base.Add(time.Duration(m)*time.Millisecond))
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		takes  []time.Time
		bounds config.PoolPolicy
		want   int
	}{
		{"no demand: the minimum", nil, config.PoolPolicy{Min: 2, Max: 64}, 2},
		{"a burst", at(0, 10, 20, 30, 40), config.PoolPolicy{Min: 2, Max: 64}, 5},
		{"a burst over the maximum", at(0, 1, 2, 3, 4, 5, 6, 7), config.PoolPolicy{Min: 2, Max: 4}, 4},
		{"spread out: one span at a time", at(0, 6000, 12000, 18000), config.PoolPolicy{Min: 0, Max: 64}, 1},
		{"the busiest span counts", at(0, 6000, 6100, 6200, 20000, 20001), config.PoolPolicy{Min: 0, Max: 64}, 3},
		{"a span is half open", at(0, 5000), config.PoolPolicy{Min: 0, Max: 64}, 1},
		{"fixed size", at(0, 1, 2), config.PoolPolicy{Min: 8, Max: 8}, 8},
		{"no pool", at(0, 1, 2), config.PoolPolicy{Min: 0, Max: 0}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sizeFor(peakWithin(tc.takes, demandSpan), tc.bounds); got != tc.want {
				t.Fatalf("size %d, want %d", got, tc.want)
			}
		})
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

// TestPoolPremounts: with pool.premount the pool's images wait attached and
// mounted detached (in no mount table), with their headroom free; a take
// hands out the mount for Place; a reload of the mount options or of
// premount replaces or unmounts them; a crash (close keeping the files)
// leaves no loop device, and the next start deletes the files.
func TestPoolPremounts(t *testing.T) {
	roottest.Require(t, "mkfs.ext4")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bounds := config.PoolPolicy{Min: 2, Max: 2, Premount: true}
	p, root := newTestPool(t, ctx, bounds)
	t.Cleanup(func() { p.close(ctx, false) })
	p.refill(ctx)
	p.wait()
	assertPremounted(t, p, 2, poolTestMount)

	dst := filepath.Join(root, "taken.img")
	m, ok := p.take(ctx, dst, poolTestOptions, poolTestMount)
	if !ok || m == nil || !m.Detached() {
		t.Fatalf("take from a premounted pool: %v, %+v", ok, m)
	}
	mnt := filepath.Join(root, "mnt")
	os.Mkdir(mnt, 0o755)
	if err := m.Place(dst, mnt); err != nil {
		m.Unmount(ctx)
		t.Fatal(err)
	}
	defer m.Unmount(ctx)
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if free := int64(st.Bavail) * st.Bsize; free < p.pol.Load().headroom {
		t.Errorf("a premounted image came with %d bytes free, want its headroom %d", free, p.pol.Load().headroom)
	}
	if found, err := imagefs.FindMount(dst); err != nil || found.Dir != mnt {
		t.Fatalf("the taken image is not mounted on %s: %+v, %v", mnt, found, err)
	}
	p.wait()
	assertPremounted(t, p, 2, poolTestMount)

	// A take for other mount options (a class's async_commit) finds none
	// ready and leaves the premounted images to the takes that can use
	// them, and the pool's size too.
	async := poolTestMount
	async.AsyncCommit = true
	p.mu.Lock()
	demand := len(p.takes)
	p.mu.Unlock()
	if m, ok := p.take(ctx, filepath.Join(root, "async.img"), poolTestOptions, async); ok || m != nil {
		t.Fatalf("a take for other mount options got %v, %+v from a premounted pool", ok, m)
	}
	if n := p.mountedCount(); n != 2 {
		t.Fatalf("a take for other mount options left %d premounted images of 2", n)
	}
	p.mu.Lock()
	if len(p.takes) != demand {
		t.Errorf("a take for other mount options counted as demand for premounted images (%d takes, %d before)", len(p.takes), demand)
	}
	p.mu.Unlock()
	p.wait()

	// A reload that mounts otherwise replaces them.
	discard := poolTestMount
	discard.Discard = true
	pol := poolTestPolicy(bounds)
	pol.mount = discard
	p.setPolicy(pol)
	p.refill(ctx)
	p.wait()
	assertPremounted(t, p, 2, discard)

	// Without premount they are unmounted and the pool refills unmounted.
	setBounds(p, config.PoolPolicy{Min: 2, Max: 2})
	p.refill(ctx)
	p.wait()
	assertPremounted(t, p, 0, discard)
	if n := countImages(t, p.dir); n != 2 {
		t.Fatalf("pool holds %d unmounted images, want 2", n)
	}

	// Turned on again, it mounts the ones it holds; a crash then leaves
	// files but no device, and the next start deletes them.
	setBounds(p, bounds)
	p.refill(ctx)
	p.wait()
	assertPremounted(t, p, 2, discard)
	files := premountedFiles(t, p)
	p.close(ctx, true)
	for _, f := range files {
		if devs, _ := imagefs.FindLoops(f); len(devs) != 0 {
			t.Errorf("%s still attached to %v after the pool closed", f, devs)
		}
	}
	tpls, err := imagefs.NewTemplates(ctx, filepath.Join(root, "templates"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := newPool(ctx, root, poolTestOptions, poolTestPolicy(bounds), tpls, &traffic.Meter{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(premountedFiles(t, again)); n != 0 {
		t.Fatalf("a restarted pool kept %d images mounted by the last one", n)
	}
}

// assertPremounted checks that the pool holds n premounted images mounted
// with mo, each attached to a loop device and in no mount table.
func assertPremounted(t *testing.T, p *pool, n int, mo imagefs.MountOptions) {
	t.Helper()
	p.mu.Lock()
	mounted := append([]*premounted(nil), p.mounted...)
	p.mu.Unlock()
	if len(mounted) != n {
		t.Fatalf("pool holds %d premounted images, want %d", len(mounted), n)
	}
	if got := p.size(); got.Mounted != n || got.Ready < n {
		t.Fatalf("pool size %+v, want %d mounted", got, n)
	}
	if files := premountedFiles(t, p); len(files) != n {
		t.Fatalf("pool's mounted directory holds %d images, want %d", len(files), n)
	}
	for _, pm := range mounted {
		if pm.opts != mo {
			t.Errorf("%s mounted with %+v, want %+v", pm.path, pm.opts, mo)
		}
		if devs, err := imagefs.FindLoops(pm.path); err != nil || len(devs) != 1 {
			t.Errorf("%s: loop devices %v, %v; want one", pm.path, devs, err)
		}
		if _, err := imagefs.FindMount(pm.path); !errors.Is(err, imagefs.ErrNotMounted) {
			t.Errorf("%s is in the mount table: %v", pm.path, err)
		}
	}
}

func premountedFiles(t *testing.T, p *pool) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(p.mountedDir(), "*.img"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// setBounds puts pool.min, pool.max and pool.premount in force, keeping
// the pool's mount options, as a reload of the [pool] table does.
func setBounds(p *pool, b config.PoolPolicy) {
	pol := *p.pol.Load()
	pol.bounds = b
	p.setPolicy(pol)
}
