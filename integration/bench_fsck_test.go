package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// repairRound is one error and what the pipeline took to bring the
// container back.
type repairRound struct {
	Kind string `json:"kind"` // "sysfs" (trigger_fs_error) or "corruption" (debugfs)
	Load bool   `json:"under_load"`
	// Injection is how the error was raised: "sysfs", "read" (the
	// damaged inode read once, its block evicted from the image's cache
	// alone) or "drop_caches" (every cache of the host dropped until
	// ext4 read it: the fallback, which slows every step under load).
	Injection string `json:"injection"`
	// RuncBusy is how many of runc's processes were running or waiting
	// for the CPU or the kernel (R, D) when the error was raised: the
	// churn's phase (its fifty containers being created or deleted at
	// once, or running).
	RuncBusy int                `json:"runc_busy"`
	Steps    map[string]float64 `json:"steps_ms"`
	// StepStart is when each step began (bench/exec-timeline.py lines
	// the restart up with the programs containerd ran for it).
	StepStart  map[string]time.Time `json:"steps_start"`
	TotalMS    float64              `json:"total_ms"` // detection to the container running again
	DetectMS   float64              `json:"detect_ms"`
	RepairExit int                  `json:"repair_exit"`
	// Details are the steps' details as the incident records them (what
	// e2fsck did, busy waits), GapMS the time between the steps (saving
	// the incident, publishing its events).
	Details map[string]string `json:"details,omitempty"`
	GapMS   float64           `json:"gap_ms"`
}

// checkFreeze is how long the online check held writers, per method.
type checkFreeze struct {
	Method   string    `json:"method"`
	Host     string    `json:"host"`
	FrozenMS []float64 `json:"frozen_ms"`
	FsckMS   []float64 `json:"e2fsck_ms"`
}

// TestRepairBenchmark measures the error monitor on a 1 GiB image holding
// 10,000 files in a running container: the time from the error to the
// container running again, split into the pipeline's steps, for errors
// raised through sysfs and for a corrupted inode; and how long the online
// check holds the container's writes, on this ext4 host (frozen for the
// whole e2fsck) and on an XFS host (frozen only for a reflink clone).
// Goal: running again within 1 s.
func TestRepairBenchmark(t *testing.T) {
	out := os.Getenv("SNUG_BENCH_OUT")
	if out == "" {
		t.Skip("benchmark: run with make bench (SNUG_BENCH_OUT)")
	}
	roottest.Require(t, "debugfs", "mkfs.xfs")
	rounds := envInt(t, "SNUG_BENCH_REPAIR_ROUNDS", 6)
	s := startStack(t, fsckPolicy+"max_repairs = 0\n")
	s.importImage()
	s.waitFollowing()
	uppers, ids, logs := s.startSteady("bench-fsck")
	upper, id := uppers["bench-fsck"], ids["bench-fsck"]

	// 10,000 files of 1-64 KiB (about 320 MiB), written through the
	// container's own filesystem.
	files := filepath.Join(upper, "files")
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 64<<10)
	for i := range 10000 {
		dir := filepath.Join(files, fmt.Sprint(i/500))
		if i%500 == 0 {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		n := 1<<10 + rng.IntN(63<<10)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), buf[:n], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The corruption rounds' victims: inodes no one reads until their
	// round, so the kernel meets their damage on its first read.
	victims := filepath.Join(upper, "victims")
	if err := os.Mkdir(victims, 0o755); err != nil {
		t.Fatal(err)
	}
	for r := range 2*rounds + 1 {
		if err := os.WriteFile(filepath.Join(victims, fmt.Sprintf("v%d", r)), []byte("victim\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	roottest.Syncfs(t, upper)
	// Out of the kernel's inode cache before the first round (a repair
	// unmounts the image, which drops them from then on).
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		t.Fatal(err)
	}
	im := s.activeImage("bench-fsck")
	t.Logf("image: quota %d MiB, used %d MiB, %d inodes", im.QuotaBytes>>20, im.UsedBytes>>20, im.InodesUsed)

	jitter := rand.New(rand.NewPCG(3, 4))
	runRounds := func(load bool, first int) []repairRound {
		var results []repairRound
		for r := first; r < first+rounds; r++ {
			kind := "sysfs"
			if r%2 == 1 {
				kind = "corruption"
			}
			since := time.Now()
			var t0 time.Time
			injection := "sysfs"
			busy := runcBusy()
			switch kind {
			case "sysfs":
				t0 = s.triggerError("bench-fsck")
			case "corruption":
				if out, err := s.snug.Snug(context.Background(), "check", "bench-fsck"); err != nil {
					t.Fatalf("snug check: %v\n%s", err, out)
				}
				// A file of its own each round: a repair clears the inode.
				t0, injection = s.corruptAndRead("bench-fsck", fmt.Sprintf("victims/v%d", r+1), id, since)
			}
			inc := s.waitIncidentClosed(id, since, time.Minute)
			if inc.State != fsck.StateResolved {
				t.Fatalf("round %d: incident ended %s (%s)", r, inc.State, inc.Reason)
			}
			rr := repairRound{Kind: kind, Load: load, Injection: injection, RuncBusy: busy, Steps: map[string]float64{}, StepStart: map[string]time.Time{}, DetectMS: ms(inc.DetectedAt.Sub(t0))}
			rr.Details = map[string]string{}
			var inSteps float64
			for _, st := range inc.Steps {
				rr.Steps[st.Name.String()] += ms(st.Duration())
				rr.StepStart[st.Name.String()] = st.Start
				inSteps += ms(st.Duration())
				if st.Detail != "" {
					rr.Details[st.Name.String()] = st.Detail
				}
			}
			last := inc.Steps[len(inc.Steps)-1]
			rr.TotalMS = ms(last.End.Sub(inc.DetectedAt))
			rr.GapMS = rr.TotalMS - inSteps
			if load {
				t.Logf("round %d (%s, under load): total %.0f ms, between steps %.0f ms; repair: %s; restart: %s", r, kind, rr.TotalMS, rr.GapMS, rr.Details[fsck.StepRepair.String()], rr.Details[fsck.StepRestart.String()])
			}
			if inc.Repair != nil {
				rr.RepairExit = inc.Repair.ExitCode
			}
			results = append(results, rr)
			// Ticking again before the next round: the restarted
			// container is past its start (whose sync waits for every
			// writer on the host, under load for seconds) and in its
			// loop, as it was when the round began.
			s.waitTicking("bench-fsck", logs["bench-fsck"])
			time.Sleep(300 * time.Millisecond)
			if load {
				// The churn runs in cycles (fifty containers created
				// at once, run, deleted at once); rounds of a steady
				// length would fall in the same part of each cycle.
				time.Sleep(time.Duration(jitter.IntN(3000)) * time.Millisecond)
			}
		}
		return results
	}
	results := runRounds(false, 0)

	// The same under load: two more containers writing, and rounds of 50
	// containers started and removed at once (ctr run --rm), as in make soak.
	s.startSteady("bench-w1", "bench-w2")
	stopChurn := make(chan struct{})
	churned := make(chan []float64)
	go func() {
		// How long each churn container's ctr run --rm took: what
		// containerd's task calls cost anyone under this load.
		var mu sync.Mutex
		var took []float64
		defer func() { churned <- took }()
		for round := 0; ; round++ {
			select {
			case <-stopChurn:
				return
			default:
			}
			var wg sync.WaitGroup
			for i := range 50 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					start := time.Now()
					if _, err := s.ctrErr("run", "--rm", "--snapshotter", "snug", testImageRef, fmt.Sprintf("churn-%d-%d", round, i), "/bin/true"); err == nil {
						mu.Lock()
						took = append(took, ms(time.Since(start)))
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
		}
	}()
	time.Sleep(3 * time.Second) // the churn under way
	loaded := runRounds(true, rounds)
	close(stopChurn)
	churnRuns := <-churned
	slices.Sort(churnRuns)
	churn := churnLoad{Runs: len(churnRuns), RunMS: percentiles(churnRuns)}
	t.Logf("%d containers started and removed during the rounds under load", churn.Runs)
	results = append(results, loaded...)

	// The online check's freeze, here (ext4) and on XFS with reflink.
	var freezes []checkFreeze
	ext4 := checkFreeze{Method: imagefs.ScrubFrozen, Host: "ext4"}
	for range 5 {
		res, err := s.snug.Snug(context.Background(), "check", "--json", "bench-fsck")
		if err != nil {
			t.Fatalf("snug check: %v\n%s", err, res)
		}
		var cr fsck.CheckResult
		if err := json.Unmarshal([]byte(res), &cr); err != nil {
			t.Fatal(err)
		}
		ext4.FrozenMS = append(ext4.FrozenMS, ms(cr.Result.Frozen))
		ext4.FsckMS = append(ext4.FsckMS, ms(cr.Result.Duration))
	}
	freezes = append(freezes, ext4, s.reflinkFreezes(t, s.activeImage("bench-fsck").Path))

	table := repairTable(results, churn, freezes)
	t.Log("\n" + table)
	writeBench(t, out, "repair", map[string]any{"rounds": results, "check_freeze": freezes, "churn": churn,
		"image": map[string]int64{"quota_bytes": im.QuotaBytes, "used_bytes": im.UsedBytes, "inodes": im.InodesUsed}}, table)
	for _, r := range results {
		if r.TotalMS > 1000 {
			t.Errorf("a %s error (under load: %v) took %.0f ms to bring the container back, goal <= 1000 ms", r.Kind, r.Load, r.TotalMS)
		}
	}
}

// runcBusy counts runc's processes (runc, runc:[2:INIT], ...) that are
// running, waiting for a CPU, or blocked in the kernel.
func runcBusy() int {
	entries, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ...
		open, closing := strings.IndexByte(string(b), '('), strings.LastIndexByte(string(b), ')')
		if open < 0 || closing < open || closing+2 >= len(b) {
			continue
		}
		if comm := string(b[open+1 : closing]); strings.HasPrefix(comm, "runc") && (b[closing+2] == 'R' || b[closing+2] == 'D') {
			n++
		}
	}
	return n
}

// corruptAndRead damages the inode of victim (a path under the
// container's upper directory that nothing has read since the image was
// mounted) with debugfs, evicts the inode table block holding it from the
// image's block device cache, and reads the file from the host: ext4 meets
// the damage at once, and nothing else on the host loses its cache. It
// returns when the read ran and how the error was raised. Should the
// kernel not report it (the inode cached after all), it falls back to
// dropping the host's caches until it does, as the corpus tests do.
func (s *stack) corruptAndRead(container, victim, id string, since time.Time) (time.Time, string) {
	t := s.t
	t.Helper()
	im := s.activeImage(container)
	inImage := "/upper/" + victim
	out, err := exec.Command("debugfs", "-R", "imap "+inImage, im.Path).CombinedOutput()
	block, ok := inodeBlock(string(out))
	if err != nil || !ok {
		t.Fatalf("debugfs imap %s: %v\n%s", inImage, err, out)
	}
	if out, err := exec.Command("debugfs", "-w", "-R", "sif "+inImage+" block[0] 0x12345678", im.Path).CombinedOutput(); err != nil || strings.Contains(string(out), "not found") {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
	dev, err := os.Open(im.Device)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Fadvise(int(dev.Fd()), block*4096, 4096, unix.FADV_DONTNEED)
	dev.Close()
	if err != nil {
		t.Fatalf("evict block %d of %s: %v", block, im.Device, err)
	}
	t0 := time.Now()
	if _, err := os.Stat(filepath.Join(im.Mountpoint, "upper", victim)); err == nil {
		t.Logf("%s: the damaged inode read fine (cached); dropping the host's caches instead", victim)
	}
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if s.incidentOf(id, since) != nil {
			return t0, "read"
		}
	}
	for i := 0; i < 50 && s.incidentOf(id, since) == nil; i++ {
		os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
		t0 = time.Now()
		time.Sleep(50 * time.Millisecond)
	}
	return t0, "drop_caches"
}

// inodeBlock reads the block number from debugfs's imap output ("located
// at block 1234, offset 0x0100").
func inodeBlock(out string) (int64, bool) {
	_, after, ok := strings.Cut(out, "located at block ")
	if !ok {
		return 0, false
	}
	num, _, _ := strings.Cut(after, ",")
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	return n, err == nil
}

// reflinkFreezes copies the image to an XFS filesystem (a loop-mounted
// file) and measures the online check there: the freeze lasts only as long
// as the clone.
func (s *stack) reflinkFreezes(t *testing.T, image string) checkFreeze {
	ctx := context.Background()
	dir := roottest.TempDir(t)
	host := filepath.Join(dir, "xfs.img")
	if err := os.WriteFile(host, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(host, 3<<30); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-m", "reflink=1", host).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v %s", err, out)
	}
	mnt := filepath.Join(dir, "xfs")
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mount", "-o", "loop", host, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount xfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	copyImg := filepath.Join(mnt, "img")
	// A copy of the live image may be torn: e2fsck -fy makes it a
	// consistent filesystem to measure on.
	if out, err := exec.Command("cp", "--sparse=always", image, copyImg).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	if res, err := imagefs.Repair(ctx, copyImg, imagefs.RepairYes); err != nil || res.Uncorrected() {
		t.Fatalf("the copy: %v %+v", err, res.Status())
	}
	m, err := imagefs.Mount(ctx, copyImg, mkdir(t, mnt, "m"), imagefs.MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmount(ctx)
	// A writer like the container's, so the freeze has as much to flush.
	stop := make(chan struct{})
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		f, err := os.OpenFile(filepath.Join(m.Dir, "upper", "io", "ticks"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return
		}
		defer f.Close()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				f.Write([]byte("t\n"))
			}
		}
	}()
	defer func() { close(stop); <-wrote }()
	cf := checkFreeze{Method: imagefs.ScrubReflink, Host: "xfs"}
	for range 5 {
		res, err := m.Scrub(ctx, imagefs.ScrubAuto)
		if err != nil || res.Method != imagefs.ScrubReflink || !res.Clean() {
			t.Fatalf("scrub on XFS: %v, %s, %s", err, res.Method, res.Status())
		}
		cf.FrozenMS = append(cf.FrozenMS, ms(res.Frozen))
		cf.FsckMS = append(cf.FsckMS, ms(res.Duration))
	}
	return cf
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// churnLoad is the churn under load: how many containers ran, and how long
// each ctr run --rm took (create, start, exit, delete).
type churnLoad struct {
	Runs  int                `json:"runs"`
	RunMS map[string]float64 `json:"ctr_run_ms"`
}

func repairTable(rounds []repairRound, churn churnLoad, freezes []checkFreeze) string {
	var b strings.Builder
	steps := []string{"containers", "freeze", "check", "stop", "repair", "restart"}
	fmt.Fprintf(&b, "error to running again, 1 GiB image with 10,000 files (ms); load: two more containers writing and 50 containers started and removed at once, round after round; runc: runc's processes running or blocked when the error was raised\n")
	fmt.Fprintf(&b, "%-11s %-11s %-5s %5s %7s", "error", "raised by", "load", "runc", "detect")
	for _, s := range steps {
		fmt.Fprintf(&b, " %10s", s)
	}
	fmt.Fprintf(&b, " %8s\n", "total")
	for _, r := range rounds {
		load := "-"
		if r.Load {
			load = "yes"
		}
		fmt.Fprintf(&b, "%-11s %-11s %-5s %5d %7.1f", r.Kind, r.Injection, load, r.RuncBusy, r.DetectMS)
		for _, s := range steps {
			fmt.Fprintf(&b, " %10.1f", r.Steps[s])
		}
		fmt.Fprintf(&b, " %8.1f\n", r.TotalMS)
	}
	fmt.Fprintf(&b, "\nthe churn meanwhile: %d containers, each ctr run --rm took p50 %.0f, p90 %.0f, max %.0f ms\n",
		churn.Runs, churn.RunMS["p50"], churn.RunMS["p90"], churn.RunMS["max"])
	fmt.Fprintf(&b, "\nonline check: writers held (frozen) and e2fsck -fn, median of 5 (ms)\n")
	for _, f := range freezes {
		fmt.Fprintf(&b, "%-8s on %-4s  frozen %7.1f  e2fsck %7.1f\n", f.Method, f.Host, median(f.FrozenMS), median(f.FsckMS))
	}
	return b.String()
}
