package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/moby/sys/mountinfo"
)

// TestLoad puts snug under load on the real stack, in two parts, and
// reports what it measured (bench/results/load.{json,txt} under make soak).
//
// Churn: for SNUG_LOAD_SECONDS (60 in make test, 180 in make soak), rounds
// of SNUG_LOAD_PARALLEL (50) containers started and removed at once
// (`ctr run --rm`, each writing and reading a file), alternating snug and
// overlayfs rounds for reference, while three containers keep writing on
// snug. No run may fail, and after it nothing may be left: containers,
// snapshots, images, mounts, loop devices, descriptors of the daemon.
//
// Scale: SNUG_LOAD_SNAPSHOTS (300) mounted snapshots: the daemon's memory
// and CPU with them, the time `snug status` takes, and the start-up
// reconcile after a restart; then all are removed, and again nothing may
// be left.
func TestLoad(t *testing.T) {
	seconds := envInt(t, "SNUG_LOAD_SECONDS", 60)
	parallel := envInt(t, "SNUG_LOAD_PARALLEL", 50)
	count := envInt(t, "SNUG_LOAD_SNAPSHOTS", 300)
	s := startStack(t, loadPolicy)
	s.importImage()
	s.waitFollowing()
	writers := []string{"load-w1", "load-w2", "load-w3"}
	s.startSteady(writers...)
	pid := s.snug.cmd.Process.Pid
	base := s.footprint(pid)

	// Churn.
	lat := map[string][]float64{}
	var failures []string
	end := time.Now().Add(time.Duration(seconds) * time.Second)
	rounds := 0
	for ; time.Now().Before(end); rounds++ {
		for _, sn := range []string{"snug", "overlayfs"} {
			took, failed := s.runAtOnce(parallel, fmt.Sprintf("load-%s-%d", sn, rounds), true, func(name string) []string {
				return []string{"run", "--rm", "--snapshotter", sn, testImageRef, name, "/bin/sh", "-c", "echo " + name + " > /f && cat /f"}
			})
			lat[sn] = append(lat[sn], took...)
			failures = append(failures, failed...)
		}
	}
	if len(failures) > 0 {
		t.Errorf("%d of %d runs failed; first: %s", len(failures), 2*rounds*parallel, failures[0])
	}
	for _, w := range writers {
		if s.taskPID(w) == "" {
			t.Errorf("writer %s stopped during the churn", w)
		}
	}
	// containerd removes a container's snapshot as it deletes it, but its
	// garbage collector may finish a removal later: allow it a moment.
	var after daemonFootprint
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		after = s.footprint(pid)
		same := after.images == base.images && after.loops == base.loops && after.mounts == base.mounts
		if same || time.Now().After(end) {
			if !same {
				out, _ := s.snug.Snug(context.Background(), "status")
				t.Errorf("after the churn: %+v, before: %+v; images:\n%s", after, base, out)
			}
			break
		}
	}
	// The pool grew to the churn's bursts, premounted: one descriptor each.
	if after.fds-after.premounted > base.fds-base.premounted+8 {
		t.Errorf("the daemon holds %d descriptors after the churn (%d premounted pool images), %d before (%d)",
			after.fds, after.premounted, base.fds, base.premounted)
	}
	if out := s.ctr("containers", "ls", "-q"); len(strings.Fields(out)) != len(writers) {
		t.Errorf("containers left after the churn:\n%s", out)
	}

	// Scale.
	sn := s.snug.Snapshotter(t)
	ctx := context.Background()
	keys := make([]string, count)
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex // protects failures
	work := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				keys[i] = fmt.Sprint("scale-", i)
				if _, err := sn.Prepare(ctx, keys[i], ""); err != nil {
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
				}
			}
		}()
	}
	for i := range count {
		work <- i
	}
	close(work)
	wg.Wait()
	prepared := time.Since(start)
	defer func() {
		for _, k := range keys {
			sn.Remove(ctx, k)
		}
	}()
	if len(failures) > 0 {
		t.Fatalf("Prepare of %d snapshots: %s", count, failures[0])
	}
	time.Sleep(5 * time.Second) // first checks, the pool refill
	cpu0, t0 := cpuSeconds(t, pid), time.Now()
	time.Sleep(20 * time.Second)
	cpu := (cpuSeconds(t, pid) - cpu0) / time.Since(t0).Seconds()
	rss := rssBytes(t, pid)
	var statusTimes []float64
	for range 5 {
		st := time.Now()
		if n := len(s.status()); n != base.images+count {
			t.Errorf("snug status lists %d images, want %d", n, base.images+count)
		}
		statusTimes = append(statusTimes, ms(time.Since(st)))
	}
	// The sockets listen before the reconcile; the daemon serves after it.
	serving := strings.Count(s.snug.Log(), "snug serving")
	restart := time.Now()
	s.snug.Restart(syscall.SIGTERM)
	for strings.Count(s.snug.Log(), "snug serving") == serving {
		if time.Since(restart) > 2*time.Minute {
			t.Fatal("the restarted daemon did not serve in 2 minutes")
		}
		time.Sleep(5 * time.Millisecond)
	}
	answered := time.Since(restart)
	reconcile := lastReconcile(t, s.snug.Log())
	s.waitSnapshotter()
	pid = s.snug.cmd.Process.Pid
	rssAfter := rssBytes(t, pid)
	sn = s.snug.Snapshotter(t)
	start = time.Now()
	for _, k := range keys {
		if err := sn.Remove(ctx, k); err != nil {
			t.Errorf("remove %s: %v", k, err)
		}
	}
	// Remove returns once the removal is recorded; Cleanup (what
	// containerd's collector calls last) waits for the images' deletion.
	if err := sn.(snapshots.Cleaner).Cleanup(ctx); err != nil {
		t.Errorf("cleanup after the removals: %v", err)
	}
	removed := time.Since(start)
	if got := s.footprint(pid); got.images != base.images || got.loops != base.loops || got.mounts != base.mounts {
		t.Errorf("after removing the %d snapshots: %+v, before: %+v", count, got, base)
	}
	for _, w := range writers {
		if s.taskPID(w) == "" {
			t.Errorf("writer %s stopped", w)
		}
	}

	slices.Sort(lat["snug"])
	slices.Sort(lat["overlayfs"])
	report := map[string]any{
		"command":  "make soak",
		"date":     time.Now().UTC().Format(time.RFC3339),
		"seconds":  seconds,
		"parallel": parallel,
		"rounds":   rounds,
		"failures": len(failures),
		"run_ms": map[string]any{
			"snug":      percentiles(lat["snug"]),
			"overlayfs": percentiles(lat["overlayfs"]),
		},
		"snapshots":               count,
		"prepare_seconds":         prepared.Seconds(),
		"cpu_core_share":          cpu,
		"rss_bytes":               rss,
		"rss_after_restart":       rssAfter,
		"status_ms_median":        median(statusTimes),
		"restart_serving_seconds": answered.Seconds(),
		"reconcile_seconds":       reconcile.Seconds(),
		"remove_seconds":          removed.Seconds(),
	}
	row := func(sn string) string {
		p := percentiles(lat[sn])
		return fmt.Sprintf("  %-9s %5d runs  p50 %6.0f  p90 %6.0f  p99 %6.0f  max %6.0f ms\n", sn, len(lat[sn]), p["p50"], p["p90"], p["p99"], p["max"])
	}
	sp, op := percentiles(lat["snug"]), percentiles(lat["overlayfs"])
	table := fmt.Sprintf("churn: %d rounds of %d parallel `ctr run --rm` per snapshotter in %ds, 3 containers writing on snug, %d failures\n",
		rounds, parallel, seconds, len(failures)) +
		row("snug") + row("overlayfs") +
		fmt.Sprintf("  snug/overlayfs: p50 %.2fx, p90 %.2fx, p99 %.2fx\n", sp["p50"]/op["p50"], sp["p90"]/op["p90"], sp["p99"]/op["p99"]) +
		fmt.Sprintf("scale: %d mounted snapshots (prepared in %v)\n  daemon CPU %.2f%% of a core, RSS %.1f MB (%.1f MB after a restart)\n"+
			"  snug status %.0f ms (median of 5)\n  restart: serving after %v, of which reconcile %v\n  removing all: %v\n",
			count, prepared.Round(time.Millisecond), 100*cpu, float64(rss)/1e6, float64(rssAfter)/1e6,
			median(statusTimes), answered.Round(time.Millisecond), reconcile.Round(time.Millisecond), removed.Round(time.Millisecond)) +
		"reproduce: make soak\n"
	t.Log("\n" + table)
	if out := os.Getenv("SNUG_BENCH_OUT"); out != "" {
		writeBench(t, out, "load", report, table)
	}
}

// loadPolicy is containerPolicy with the default check interval (100 ms),
// so that the scale figures are the default policy's.
const loadPolicy = `
[image]
quota = "1GiB"
[window]
initial = "32MiB"
headroom = "64MiB"
`

// daemonFootprint is what a daemon holds: images it lists, loop devices
// and mounts on its state, its open descriptors.
// daemonFootprint is what the daemon holds: images in service, their loop
// devices and mounts, its descriptors, and the pool's premounted images
// (each holds a descriptor: its detached mount).
type daemonFootprint struct{ images, loops, mounts, fds, premounted int }

func (s *stack) footprint(pid int) daemonFootprint {
	s.t.Helper()
	root := s.snug.Root
	var f daemonFootprint
	f.images = len(s.status())
	f.loops = len(loopsUnder(root + "/snapshots/"))
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Join(root, "snapshots")))
	if err != nil {
		s.t.Fatal(err)
	}
	f.mounts = len(mounts)
	premounted, _ := filepath.Glob(filepath.Join(root, "pool", "mounted", "*.img"))
	f.premounted = len(premounted)
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	f.fds = len(fds)
	return f
}

// percentiles of sorted values, in their unit.
func percentiles(v []float64) map[string]float64 {
	if len(v) == 0 {
		return map[string]float64{}
	}
	at := func(p float64) float64 { return v[min(len(v)-1, int(p*float64(len(v))))] }
	return map[string]float64{"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": v[len(v)-1]}
}

var reconciledTook = regexp.MustCompile(`snapshots reconciled.* took=([0-9.]+[µmn]?s)`)

// lastReconcile is the start-up reconcile time of the daemon's last start.
func lastReconcile(t *testing.T, log string) time.Duration {
	t.Helper()
	m := reconciledTook.FindAllStringSubmatch(log, -1)
	if len(m) == 0 {
		t.Fatal("no reconcile time in the daemon's log")
	}
	d, err := time.ParseDuration(m[len(m)-1][1])
	if err != nil {
		t.Fatal(err)
	}
	return d
}
