package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/internal/roottest"
)

// TestContainerdBenchmark compares snug with containerd's own snapshotters
// in one containerd, in one run: the time to import an image with a ~200 MiB
// layer of ~10,000 files, and the latency of `ctr run --rm ... true`. The
// snapshotters take turns (round robin) so that the machine's noise hits
// them alike; the report gives medians and ratios to overlayfs, as JSON and
// a table in $SNUG_BENCH_OUT. It runs under `make bench` only.
func TestContainerdBenchmark(t *testing.T) {
	out := os.Getenv("SNUG_BENCH_OUT")
	if out == "" {
		t.Skip("benchmark: run with make bench (SNUG_BENCH_OUT)")
	}
	requireStack(t)
	// erofs with its tar differ (mkfs.erofs --tar=f, erofs-utils 1.7 and
	// later): make bench-containerd builds 1.8 (scripts/erofs-utils.sh)
	// and names its bin directory in SNUG_BENCH_EROFS_BIN.
	erofsBin := os.Getenv("SNUG_BENCH_EROFS_BIN")
	mkfsErofs := filepath.Join(erofsBin, "mkfs.erofs")
	if _, err := os.Stat(mkfsErofs); erofsBin == "" || err != nil {
		t.Fatalf("needs erofs-utils 1.7 or later in SNUG_BENCH_EROFS_BIN (make bench-containerd builds it): %q: %v", erofsBin, err)
	}
	t.Setenv("SNUG_STACK_PATH", erofsBin)
	imports := envInt(t, "SNUG_BENCH_IMPORTS", 4)
	runs := envInt(t, "SNUG_BENCH_RUNS", 15)

	dir := roottest.TempDir(t)
	image := filepath.Join(dir, "big.tar")
	build := exec.Command("bash", repoPath("scripts/testimage.sh"), image, "localhost/snug-big:latest")
	build.Env = append(os.Environ(), "SNUG_BIGLAYER=1")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("testimage.sh: %v\n%s", err, b)
	}
	// blockfile copies a formatted scratch image per snapshot: give it an
	// ext4 scratch of snug's quota.
	scratch := filepath.Join(dir, "scratch.img")
	if b, err := exec.Command("truncate", "-s", "1G", scratch).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	if b, err := exec.Command("mkfs.ext4", "-q", "-F", scratch).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	snapshotters := []string{"overlayfs", "snug", "erofs", "blockfile"}
	s := startStackWith(t, "[image]\nquota = \"1GiB\"\n",
		"    { platform = \"linux/amd64\", snapshotter = \"erofs\", differ = \"erofs\" },\n"+
			"    { platform = \"linux/amd64\", snapshotter = \"blockfile\" },\n",
		fmt.Sprintf("\n[plugins.\"io.containerd.snapshotter.v1.blockfile\"]\n  scratch_file = %q\n  fs_type = \"ext4\"\n", scratch))

	if plugins := s.ctr("plugins", "ls"); !regexp.MustCompile(`(?m)^io\.containerd\.differ\.v1\s+erofs\s.*\sok\s*$`).MatchString(plugins) {
		t.Fatalf("containerd's erofs differ is not running (mkfs.erofs %s):\n%s", erofsVersion(mkfsErofs), plugins)
	}
	res := map[string]*benchResult{}
	for _, sn := range snapshotters {
		res[sn] = &benchResult{}
	}
	ref := func(sn string) string { return "localhost/big-" + sn + ":latest" }
	// Every import starts from an empty containerd: the four images share
	// their blobs, and a blob kept alive by one image keeps the snapshots
	// of all (its gc.ref.snapshot labels), so a re-import would unpack
	// nothing. Each figure is a whole import: ingest and unpack.
	imported := map[string]bool{}
	for i := range imports {
		for _, sn := range rotate(snapshotters, i) {
			for other := range imported {
				s.ctr("images", "rm", "--sync", ref(other))
				delete(imported, other)
			}
			if out := s.ctr("snapshots", "--snapshotter", sn, "ls"); strings.Count(out, "\n") > 1 {
				t.Fatalf("%s still has snapshots before an import:\n%s", sn, out)
			}
			// Each import starts on a synced host: what the one before
			// left to writeback (blockfile's is 4 GiB) would otherwise
			// slow whichever import comes next, and most the one that
			// syncs what it writes.
			unix.Sync()
			before := sectorsWritten(t, dir)
			start := time.Now()
			s.ctr("images", "import", "--snapshotter", sn, "--base-name", "localhost/big-"+sn, image)
			res[sn].ImportSeconds = append(res[sn].ImportSeconds, time.Since(start).Seconds())
			res[sn].ImportWrittenMiB = append(res[sn].ImportWrittenMiB, float64(sectorsWritten(t, dir)-before)/2048)
			imported[sn] = true
		}
	}
	for _, sn := range snapshotters {
		if !imported[sn] {
			s.ctr("images", "import", "--snapshotter", sn, "--base-name", "localhost/big-"+sn, image)
		}
	}
	// Single runs: overlayfs, snug and erofs take turns; blockfile's runs
	// come after, on a synced host. Each of its runs copies the 1 GiB
	// scratch image and leaves it to writeback: interleaved, the one or
	// two runs after it took ~400 ms instead of ~200 ms, whichever
	// snapshotter they were (five runs of 2026-12-05/06), so the order of
	// the turns, not the snapshotter, decided most medians.
	run := func(sn string, i int) {
		id := fmt.Sprintf("bench-%s-%d", sn, i)
		start := time.Now()
		s.ctr("run", "--rm", "--snapshotter", sn, ref(sn), id, "/bin/true")
		res[sn].RunMillis = append(res[sn].RunMillis, float64(time.Since(start).Microseconds())/1000)
	}
	turns := slices.DeleteFunc(slices.Clone(snapshotters), func(sn string) bool { return sn == "blockfile" })
	unix.Sync()
	for i := range runs {
		for _, sn := range rotate(turns, i) {
			run(sn, i)
		}
	}
	unix.Sync()
	for i := range runs {
		run("blockfile", i)
	}
	// Bursts: SNUG_BENCH_BURST containers started at once, each run to its
	// end, SNUG_BENCH_BURST_ROUNDS times per snapshotter, in turns.
	// blockfile sits them out: each of its containers copies the whole
	// 1 GiB scratch image, 50 GiB a burst.
	burst, burstRounds := envInt(t, "SNUG_BENCH_BURST", 50), envInt(t, "SNUG_BENCH_BURST_ROUNDS", 2)
	bursting := []string{"overlayfs", "snug", "erofs"}
	var failures []string
	reclaimsBefore := strings.Count(s.snug.Log(), "msg=reclaimed")
	for r := range burstRounds {
		for _, sn := range rotate(bursting, r) {
			unix.Sync() // blockfile's runs, or the burst before
			took, failed := s.runAtOnce(burst, fmt.Sprintf("burst-%s-%d", sn, r), false, func(id string) []string {
				return []string{"run", "--rm", "--snapshotter", sn, ref(sn), id, "/bin/true"}
			})
			res[sn].BurstMillis = append(res[sn].BurstMillis, took...)
			failures = append(failures, failed...)
		}
	}
	if len(failures) > 0 {
		t.Errorf("%d runs of the bursts failed; first: %s", len(failures), failures[0])
	}
	// A container run with --rm needs no reclaim at its stop: its image
	// is deleted whole. Count the ones snug did for nothing.
	res["snug"].BurstReclaims = strings.Count(s.snug.Log(), "msg=reclaimed") - reclaimsBefore
	report := benchReport{
		Command:      "make bench-containerd",
		Date:         time.Now().UTC().Format(time.RFC3339),
		Image:        "scripts/testimage.sh with SNUG_BIGLAYER=1: 4 layers, the largest ~200 MiB in 10,000 files",
		ErofsUtils:   erofsVersion(mkfsErofs) + ", tar differ",
		Snapshotters: res,
	}
	base := res["overlayfs"]
	for _, sn := range snapshotters {
		r := res[sn]
		r.ImportMedian = median(r.ImportSeconds)
		r.RunMedian = median(r.RunMillis)
		r.ImportRatio = r.ImportMedian / median(base.ImportSeconds)
		r.ImportWrittenMedian = median(r.ImportWrittenMiB)
		if len(r.BurstMillis) > 0 {
			sorted := slices.Clone(r.BurstMillis)
			slices.Sort(sorted)
			r.Burst = percentiles(sorted)
			r.BurstRatio = map[string]float64{}
			for _, p := range []string{"p50", "p90", "p99"} {
				r.BurstRatio[p] = r.Burst[p] / base.Burst[p]
			}
		}
		r.RunRatio = r.RunMedian / median(base.RunMillis)
	}
	var table strings.Builder
	fmt.Fprintf(&table, "%-10s %12s %8s %14s %12s %8s\n", "snapshotter", "import (s)", "ratio", "written (MiB)", "run (ms)", "ratio")
	for _, sn := range snapshotters {
		r := res[sn]
		fmt.Fprintf(&table, "%-10s %12.2f %7.2fx %14.0f %12.1f %7.2fx\n", sn, r.ImportMedian, r.ImportRatio, r.ImportWrittenMedian, r.RunMedian, r.RunRatio)
	}
	fmt.Fprintf(&table, "\n%d at once, %d rounds  %10s %10s %10s   %s\n", burst, burstRounds, "p50 (ms)", "p90 (ms)", "p99 (ms)", "ratios p50/p90/p99")
	for _, sn := range bursting {
		r := res[sn]
		fmt.Fprintf(&table, "%-22s %10.0f %10.0f %10.0f   %.2fx %.2fx %.2fx\n", sn, r.Burst["p50"], r.Burst["p90"], r.Burst["p99"],
			r.BurstRatio["p50"], r.BurstRatio["p90"], r.BurstRatio["p99"])
	}
	fmt.Fprintf(&table, "snug reclaimed %d images of the %d --rm containers of its bursts\n", res["snug"].BurstReclaims, burst*burstRounds)
	fmt.Fprintf(&table, "medians of %d imports and %d runs each; written: to the host disk while the import ran; blockfile runs no burst (its containers copy 1 GiB each); erofs-utils %s\n", imports, runs, report.ErofsUtils)
	t.Log("\n" + table.String())
	js, _ := json.MarshalIndent(report, "", "  ")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(out, "containerd.json"), js, 0o644)
	os.WriteFile(filepath.Join(out, "containerd.txt"), []byte(table.String()), 0o644)
}

type benchReport struct {
	Command      string                  `json:"command"`
	Date         string                  `json:"date"`
	Image        string                  `json:"image"`
	ErofsUtils   string                  `json:"erofs_utils"`
	Snapshotters map[string]*benchResult `json:"snapshotters"`
}

type benchResult struct {
	ImportSeconds []float64 `json:"import_seconds"`
	ImportMedian  float64   `json:"import_median_seconds"`
	ImportRatio   float64   `json:"import_ratio_to_overlayfs"`
	// ImportWrittenMiB is what the host disk wrote while each import
	// ran: what reached it before the import returned.
	ImportWrittenMiB    []float64 `json:"import_written_mib"`
	ImportWrittenMedian float64   `json:"import_written_median_mib"`
	RunMillis           []float64 `json:"run_ms"`
	RunMedian           float64   `json:"run_median_ms"`
	RunRatio            float64   `json:"run_ratio_to_overlayfs"`
	// BurstMillis are the runs of the bursts (many started at once).
	BurstMillis []float64          `json:"burst_ms,omitempty"`
	Burst       map[string]float64 `json:"burst_percentiles_ms,omitempty"`
	BurstRatio  map[string]float64 `json:"burst_ratio_to_overlayfs,omitempty"`
	// BurstReclaims counts the reclaims snug ran during the bursts.
	BurstReclaims int `json:"burst_reclaims,omitempty"`
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// rotate starts the round at a different snapshotter each time.
func rotate(s []string, i int) []string {
	i %= len(s)
	return append(slices.Clone(s[i:]), s[:i]...)
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// sectorsWritten reads how many sectors the block device holding dir has
// written (/sys/dev/block/MAJ:MIN/stat, its seventh field).
func sectorsWritten(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("/sys/dev/block/%d:%d/stat", unix.Major(st.Dev), unix.Minor(st.Dev))
	b, err := os.ReadFile(path)
	f := strings.Fields(string(b))
	if err != nil || len(f) < 7 {
		t.Fatalf("%s: %v %q", path, err, b)
	}
	n, err := strconv.ParseInt(f[6], 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}

// erofsVersion is what `mkfs.erofs --version` says of itself.
func erofsVersion(mkfs string) string {
	out, _ := exec.Command(mkfs, "--version").Output()
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}
