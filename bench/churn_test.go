package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
	"golang.org/x/sys/unix"
)

const (
	mib    = int64(1) << 20
	rounds = 30
	round  = 200 * mib
)

// mode is one way of running the churn workload.
type mode struct {
	Name      string `json:"name"`
	Window    int64  `json:"-"` // 0: no balloon (plain ext4 on a sparse file)
	TrimEach  bool   `json:"-"` // FITRIM after every round
	Keep      bool   `json:"-"` // run snug's keeper (grow on demand)
	ReclaimAt bool   `json:"-"` // Reclaim after the last round ("after stop")
}

type roundResult struct {
	Round     int   `json:"round"`
	Used      int64 `json:"used_bytes"`
	Footprint int64 `json:"footprint_bytes"`
}

type modeResult struct {
	Mode       string        `json:"mode"`
	Rounds     []roundResult `json:"rounds"`
	FinalUsed  int64         `json:"final_used_bytes"`
	FinalFoot  int64         `json:"final_footprint_bytes"`
	FinalSwell float64       `json:"final_swell"`
	MaxSwell   float64       `json:"max_swell"`
	AfterStop  *roundResult  `json:"after_reclaim,omitempty"`
	Duration   time.Duration `json:"duration_ns"`
}

type results struct {
	Quota         int64         `json:"quota_bytes"`
	Rounds        int           `json:"rounds"`
	RoundBytes    int64         `json:"round_bytes"`
	CreateTime    time.Duration `json:"create_ns"`
	CreateFoot    int64         `json:"create_footprint_bytes"`
	GrowTime      time.Duration `json:"grow_256mib_ns"`
	ReclaimTime   time.Duration `json:"reclaim_ns"`
	ReclaimFreed  int64         `json:"reclaim_trimmed_bytes"`
	Modes         []modeResult  `json:"modes"`
	Kernel        string        `json:"kernel"`
	When          time.Time     `json:"when"`
	ReproduceWith string        `json:"reproduce_with"`
}

// TestChurnBenchmark runs the churn workload of the imagefs issue: 30 rounds
// of writing ~200 MiB of files from 4 KiB to 8 MiB in a new top-level
// directory, deleting the previous round's directory and syncing, on a 4 GiB
// image, in four modes side by side.
func TestChurnBenchmark(t *testing.T) {
	out := benchOut(t, "mkfs.ext4", "e2fsck")
	quota := int64(32 << 30)
	if v := os.Getenv("SNUG_BENCH_QUOTA_GIB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("SNUG_BENCH_QUOTA_GIB=%q", v)
		}
		quota = int64(n) << 30
	}
	dir := roottest.TempDir(t)
	ctx := context.Background()
	res := results{Quota: quota, Rounds: rounds, RoundBytes: round, When: time.Now().UTC(),
		ReproduceWith: fmt.Sprintf("make bench-imagefs SNUG_BENCH_QUOTA_GIB=%d", quota>>30)}
	var uts unix.Utsname
	unix.Uname(&uts)
	res.Kernel = strings.TrimRight(string(uts.Release[:]), "\x00")

	res.CreateTime, res.CreateFoot = timeCreate(t, dir)
	for _, md := range []mode{
		{Name: "plain ext4 (sparse file)"},
		{Name: "plain ext4 + fstrim each round", TrimEach: true},
		{Name: "snug window", Window: 256 * mib, Keep: true, ReclaimAt: true},
		{Name: "snug window + trim each round", Window: 256 * mib, Keep: true, TrimEach: true, ReclaimAt: true},
	} {
		r := runMode(t, ctx, dir, quota, md, &res)
		res.Modes = append(res.Modes, r)
		t.Logf("%s: final used %d footprint %d swell %.2f max %.2f", r.Mode, r.FinalUsed, r.FinalFoot, r.FinalSwell, r.MaxSwell)
	}
	writeResults(t, out, res)
}

func timeCreate(t *testing.T, dir string) (time.Duration, int64) {
	var total time.Duration
	var foot int64
	const n = 5
	for i := range n {
		p := filepath.Join(dir, fmt.Sprint("create", i))
		start := time.Now()
		if err := imagefs.Create(context.Background(), p, imagefs.CreateOptions{Quota: 10 << 30, Window: 256 * mib, DirectIO: true}); err != nil {
			t.Fatal(err)
		}
		total += time.Since(start)
		foot = footprint(t, p)
		os.Remove(p)
	}
	return total / n, foot
}

func runMode(t *testing.T, ctx context.Context, dir string, quota int64, md mode, res *results) modeResult {
	img := filepath.Join(dir, "churn.img")
	os.Remove(img)
	window := md.Window
	if window == 0 {
		window = quota // no balloon
	}
	if err := imagefs.Create(ctx, img, imagefs.CreateOptions{Quota: quota, Window: window, DirectIO: true}); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	os.MkdirAll(mnt, 0o755)
	m, err := imagefs.Mount(ctx, img, mnt, imagefs.MountOptions{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmount(ctx)
	if md.Keep && res.GrowTime == 0 {
		st, _ := m.Stat()
		start := time.Now()
		if _, err := m.Grow(ctx, st.WindowBytes+256*mib); err != nil {
			t.Fatal(err)
		}
		res.GrowTime = time.Since(start)
		if _, err := m.Reclaim(ctx, imagefs.ReclaimOptions{Headroom: 256 * mib}); err != nil {
			t.Fatal(err)
		}
	}
	kctx, cancel := context.WithCancel(ctx)
	keepDone := make(chan struct{})
	if md.Keep {
		w := imagefs.NewWatcher(10*time.Millisecond, imagefs.Observer{Failed: func(_ string, err error) { t.Error(err) }})
		w.Add("churn", m, imagefs.Policy{Headroom: 256 * mib, HeadroomRatio: 0.1, Burst: 500 * time.Millisecond})
		go func() { w.Run(kctx); close(keepDone) }()
	} else {
		close(keepDone)
	}
	rng := rand.New(rand.NewPCG(1, 2)) // the same files in every mode
	buf := make([]byte, 8*mib)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	r := modeResult{Mode: md.Name}
	start := time.Now()
	for rd := 1; rd <= rounds; rd++ {
		d := filepath.Join(mnt, fmt.Sprint("round", rd))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for n, written := 0, int64(0); written < round; n++ {
			size := int64(4096) << rng.IntN(12) // 4 KiB .. 8 MiB, log-uniform
			if err := os.WriteFile(filepath.Join(d, fmt.Sprint(n)), buf[:size], 0o644); err != nil {
				t.Fatalf("%s round %d: %v", md.Name, rd, err)
			}
			written += size
		}
		os.RemoveAll(filepath.Join(mnt, fmt.Sprint("round", rd-1)))
		roottest.Syncfs(t, mnt)
		if md.TrimEach {
			if _, err := m.Trim(ctx); err != nil {
				t.Fatal(err)
			}
		}
		st, err := m.Stat()
		if err != nil {
			t.Fatal(err)
		}
		r.Rounds = append(r.Rounds, roundResult{Round: rd, Used: st.UsedBytes, Footprint: st.FootprintBytes})
		r.MaxSwell = max(r.MaxSwell, float64(st.FootprintBytes)/float64(st.UsedBytes))
	}
	r.Duration = time.Since(start)
	cancel()
	<-keepDone
	last := r.Rounds[len(r.Rounds)-1]
	r.FinalUsed, r.FinalFoot = last.Used, last.Footprint
	r.FinalSwell = float64(last.Footprint) / float64(last.Used)
	if md.ReclaimAt {
		start := time.Now()
		rr, err := m.Reclaim(ctx, imagefs.ReclaimOptions{Headroom: 256 * mib})
		if err != nil {
			t.Fatal(err)
		}
		if res.ReclaimTime == 0 {
			res.ReclaimTime, res.ReclaimFreed = time.Since(start), rr.TrimmedBytes
		}
		st, _ := m.Stat()
		r.AfterStop = &roundResult{Round: rounds, Used: st.UsedBytes, Footprint: st.FootprintBytes}
	}
	if err := m.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	if c, err := imagefs.Check(ctx, img); err != nil || !c.Clean() {
		t.Fatalf("%s: e2fsck after the run: %v %s", md.Name, err, c.Output)
	}
	return r
}

func writeResults(t *testing.T, dir string, res results) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	name := fmt.Sprintf("imagefs-%dgib", res.Quota>>30)
	if err := os.WriteFile(filepath.Join(dir, name+".json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	var s strings.Builder
	fmt.Fprintf(&s, "churn: %d rounds of %d MiB (files 4KiB-8MiB, delete previous round, sync) on a %d GiB image; kernel %s\n\n",
		res.Rounds, res.RoundBytes>>20, res.Quota>>30, res.Kernel)
	fmt.Fprintf(&s, "%-34s %10s %12s %8s %9s %10s %14s\n", "mode", "used MiB", "footprint MiB", "swell", "max swell", "vs plain", "after reclaim")
	plain := float64(res.Modes[0].FinalFoot)
	for _, m := range res.Modes {
		after := "-"
		if m.AfterStop != nil {
			after = fmt.Sprintf("%d MiB (%.2fx)", m.AfterStop.Footprint>>20, float64(m.AfterStop.Footprint)/float64(m.AfterStop.Used))
		}
		fmt.Fprintf(&s, "%-34s %10d %12d %7.2fx %8.2fx %9.2fx %14s\n", m.Mode, m.FinalUsed>>20, m.FinalFoot>>20,
			m.FinalSwell, m.MaxSwell, float64(m.FinalFoot)/plain, after)
	}
	fmt.Fprintf(&s, "\ncreate (10 GiB image): %v, footprint %d KiB; grow by 256 MiB: %v; reclaim: %v (trimmed %d MiB)\n",
		res.CreateTime.Round(time.Millisecond), res.CreateFoot>>10, res.GrowTime.Round(time.Microsecond),
		res.ReclaimTime.Round(time.Millisecond), res.ReclaimFreed>>20)
	fmt.Fprintf(&s, "reproduce: %s\n", res.ReproduceWith)
	if err := os.WriteFile(filepath.Join(dir, name+".txt"), []byte(s.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Print(s.String())
}

func footprint(t *testing.T, path string) int64 {
	n, err := imagefs.Footprint(path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
