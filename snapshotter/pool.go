package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/traffic"
)

// How the pool follows demand. Making an image (a copy of its template and
// a new UUID) is much of what Prepare costs, and it sits on `ctr run`'s
// critical path; a pool that holds what a burst of Prepares takes lets the
// whole burst rename instead.
const (
	// demandSpan: the pool aims at the most Prepares seen within any
	// span this long...
	demandSpan = 5 * time.Second
	// demandMemory: ...over this long, after which a burst is forgotten
	// and the pool shrinks back.
	demandMemory = 2 * time.Minute
	// refillLull: a refill waits until no snapshot was prepared or
	// removed for this long (traffic), at most refillLullMax, so that a
	// steady stream is served too. A pool sized for a burst covers it; its
	// refill, after the burst, costs the burst nothing.
	refillLull    = 100 * time.Millisecond
	refillLullMax = 5 * time.Second
	// tendEvery: how often the pool is checked against its target without
	// a take (to shrink once a burst is forgotten).
	tendEvery = 10 * time.Second
	// maxDemandRecords bounds the takes remembered.
	maxDemandRecords = 4 * config.MaxPool
)

// pool keeps fresh rw images made with the policy's default options in
// root/pool, named by those options, so that an image made for another
// policy is never handed out. Its size follows demand between the policy's
// pool.min and pool.max (sizeFor); refills run in parallel, one image per
// CPU at a time, once Prepares pause. With pool.premount its images wait
// mounted (premount.go), in root/pool/mounted.
type pool struct {
	dir       string
	opts      imagefs.CreateOptions
	templates *imagefs.Templates
	pol       atomic.Pointer[poolPolicy]
	traffic   *traffic.Meter // the snapshotter's (Prepare marks it): a refill waits for a lull
	// now is the clock of demand; tests move it.
	now func() time.Time
	// born and seq name the images made: unique across restarts.
	born int64
	seq  atomic.Int64

	// mu protects takes, filling and mounted; refills run one at a time
	// (each makes several images at once).
	mu      sync.Mutex
	takes   []time.Time // the takes of the last demandMemory, oldest first
	filling bool
	mounted []*premounted // ready and mounted, newest last
	wg      sync.WaitGroup
}

// poolPolicy is what the pool takes from the policy in force: its bounds,
// and how its premounted images are mounted and how much of their window
// is made free ahead (the base policy's headroom).
type poolPolicy struct {
	bounds   config.PoolPolicy
	mount    imagefs.MountOptions
	headroom int64
}

// poolPolicyFrom is the pool's part of cfg.
func poolPolicyFrom(cfg config.Config) poolPolicy {
	return poolPolicy{bounds: cfg.Pool, mount: policyFrom(cfg).mount, headroom: int64(cfg.Window.Headroom)}
}

func newPool(ctx context.Context, root string, opts imagefs.CreateOptions, pol poolPolicy, templates *imagefs.Templates, tr *traffic.Meter) (*pool, error) {
	p := &pool{dir: filepath.Join(root, "pool"), opts: opts, templates: templates, traffic: tr, now: time.Now, born: time.Now().UnixNano()}
	p.setPolicy(pol)
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, err
	}
	// The images a killed daemon held mounted went with it, but were
	// mounted: they are no longer pristine.
	if err := os.RemoveAll(p.mountedDir()); err != nil {
		return nil, err
	}
	if err := os.Mkdir(p.mountedDir(), 0o700); err != nil {
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
		if !p.isOurs(e.Name()) && e.Name() != mountedSubdir {
			if err := os.Remove(filepath.Join(p.dir, e.Name())); err != nil {
				return nil, err
			}
		}
	}
	return p, nil
}

// setPolicy puts a policy's [pool] and mount options in force (a reload);
// premounted images mounted otherwise are dropped at the next take or
// refill.
func (p *pool) setPolicy(pol poolPolicy) { p.pol.Store(&pol) }

// prefix names the images made with the pool's options.
func (p *pool) prefix() string {
	o := p.opts
	return fmt.Sprintf("q%d-c%d-w%d-j%d-i%d-n%d-d%t-f%t-", o.Quota, o.Ceiling, o.Window, o.JournalSize, o.BytesPerInode, o.Inodes, o.DirectIO, o.FastCommit)
}

// isOurs reports whether name is a ready image made with the pool's
// options.
func (p *pool) isOurs(name string) bool {
	return strings.HasPrefix(name, p.prefix()) && strings.HasSuffix(name, ".img")
}

// ready lists the pool's ready images.
func (p *pool) ready() []string {
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if p.isOurs(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

// take moves a ready image to dst and reports whether there was one; a
// premounted one comes with its detached mount (for Place), an unmounted
// one with none. Only images made with exactly the options wanted are
// taken, and mounted with the mount options mo; those takes, hit or miss,
// are the pool's demand, but for a pool that premounts its images with
// other options than mo (a class's async_commit or discard): what it holds
// cannot serve them, so they leave its images and its size alone.
func (p *pool) take(ctx context.Context, dst string, want imagefs.CreateOptions, mo imagefs.MountOptions) (*imagefs.Mounted, bool) {
	if want != p.opts {
		return nil, false
	}
	pol := p.pol.Load()
	premounted := mo == pol.mount
	if premounted || !pol.bounds.Premount {
		p.recordTake()
	}
	defer p.refill(ctx)
	if premounted {
		if m := p.takeMounted(ctx, dst, mo); m != nil {
			return m, true
		}
	}
	for _, name := range p.ready() {
		// A rename is atomic: two takers cannot get the same image.
		if err := os.Rename(filepath.Join(p.dir, name), dst); err == nil {
			return nil, true
		}
	}
	return nil, false
}

func (p *pool) recordTake() {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.takes = append(p.takes, now)
	drop := 0
	for drop < len(p.takes) && (now.Sub(p.takes[drop]) > demandMemory || len(p.takes)-drop > maxDemandRecords) {
		drop++
	}
	p.takes = p.takes[drop:]
}

// target is how many images the pool should hold now.
func (p *pool) target() int {
	now := p.now()
	p.mu.Lock()
	recent := p.takes
	for len(recent) > 0 && now.Sub(recent[0]) > demandMemory {
		recent = recent[1:]
	}
	peak := peakWithin(recent, demandSpan)
	p.mu.Unlock()
	return sizeFor(peak, p.pol.Load().bounds)
}

// sizeFor is the pool's size for a peak demand: the peak, within the
// policy's bounds.
func sizeFor(peak int, b config.PoolPolicy) int {
	return min(max(peak, b.Min), b.Max)
}

// peakWithin is the most of the times (in order) that fall within any
// span of the given length.
func peakWithin(times []time.Time, span time.Duration) int {
	peak, first := 0, 0
	for last := range times {
		for times[last].Sub(times[first]) >= span {
			first++
		}
		peak = max(peak, last-first+1)
	}
	return peak
}

// tend keeps the pool at its target until ctx ends: at once, then every
// tendEvery (a take refills it too).
func (p *pool) tend(ctx context.Context) {
	t := time.NewTicker(tendEvery)
	defer t.Stop()
	for {
		p.refill(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// refill brings the pool to its target in the background: it deletes what
// is beyond it, or makes what is missing, several at once.
func (p *pool) refill(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.filling || ctx.Err() != nil {
		return
	}
	p.filling = true
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer func() { p.mu.Lock(); p.filling = false; p.mu.Unlock() }()
		for range 4 * config.MaxPool { // bounded: never spin
			pol := p.pol.Load()
			p.dropMounted(ctx, pol)
			have, mounted, want := p.ready(), p.mountedCount(), p.target()
			if len(have)+mounted > want {
				p.shrink(ctx, have, len(have)+mounted-want)
				return
			}
			toMount := len(have) > 0 && pol.bounds.Premount
			if (len(have)+mounted == want && !toMount) || !p.traffic.WaitLull(ctx, refillLull, refillLullMax) {
				return
			}
			var ok bool
			if toMount {
				ok = p.premountReady(ctx, have[:min(len(have), runtime.NumCPU())], pol)
			} else {
				ok = p.make(ctx, min(want-len(have)-mounted, runtime.NumCPU()), pol)
			}
			if !ok {
				return
			}
		}
	}()
}

// make makes n images at once, mounted if the policy says premount; false
// if one failed.
func (p *pool) make(ctx context.Context, n int, pol *poolPolicy) bool {
	return p.parallel(ctx, n, func() error {
		name := fmt.Sprintf("%s%x-%d.img", p.prefix(), p.born, p.seq.Add(1))
		if !pol.bounds.Premount {
			return p.templates.Create(ctx, filepath.Join(p.dir, name), p.opts)
		}
		path := filepath.Join(p.mountedDir(), name)
		if err := p.templates.CreateToAttach(ctx, path, p.opts); err != nil {
			return err
		}
		return p.premount(ctx, path, pol, true)
	})
}

// parallel runs n calls of f at once; false if one failed (the first
// failure is logged).
func (p *pool) parallel(ctx context.Context, n int, f func() error) bool {
	var wg sync.WaitGroup
	var failed atomic.Bool
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				if failed.CompareAndSwap(false, true) && ctx.Err() == nil {
					log.G(ctx).WithError(err).Warn("cannot fill the image pool; new snapshots make their own")
				}
			}
		}()
	}
	wg.Wait()
	return !failed.Load()
}

// shrink deletes n of the images the pool holds: unmounted ones (have)
// first, then premounted ones.
func (p *pool) shrink(ctx context.Context, have []string, n int) {
	for _, name := range have[:min(n, len(have))] {
		if err := os.Remove(filepath.Join(p.dir, name)); err != nil && !os.IsNotExist(err) {
			log.G(ctx).WithError(err).WithField("image", name).Warn("cannot shrink the image pool")
			return
		}
	}
	for range n - min(n, len(have)) {
		pm := p.popMounted()
		if pm == nil {
			return
		}
		p.discard(ctx, pm)
	}
}

// size is how many images the pool holds ready now, how many of them
// mounted, and how many it aims at.
func (p *pool) size() PoolSize {
	mounted := p.mountedCount()
	return PoolSize{Ready: len(p.ready()) + mounted, Mounted: mounted, Target: p.target()}
}

// wait waits for a refill in progress (for Close).
func (p *pool) wait() { p.wg.Wait() }
