package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// churnWorkload is one churn pattern run in a container: its script
// prints "round N USED_KIB" after each round's sync and then waits until
// the host has measured (it creates /churn-go-N in the container's root).
type churnWorkload struct {
	name   string // files: churn-container.*, else churn-NAME.*
	about  string
	rounds int
	// settle is how long after the round's line the footprint is read.
	settle time.Duration
	script string
}

// filesChurn: 30 rounds of writing ~200 MiB in files of 4 KiB to 8 MiB
// (log-uniform sizes, random data) in a new directory, deleting the
// previous round's, and syncing; read 1 s after each sync.
var filesChurn = churnWorkload{
	name:   "files",
	about:  "30 rounds of ~200 MiB in files of 4 KiB-8 MiB, previous round deleted, sync; footprint read 1 s after each round's sync",
	rounds: 30,
	settle: time.Second,
	script: `set -eu
dd if=/dev/urandom of=/seed bs=1M count=8 2>/dev/null
r=1
while [ $r -le 30 ]; do
  mkdir /churn$r
  w=0; n=0
  while [ $w -lt 204800 ]; do
    k=$(( 4 << (n * 7 % 12) ))   # 4 KiB .. 8 MiB
    head -c $((k * 1024)) /seed > /churn$r/f$n
    w=$((w + k)); n=$((n + 1))
  done
  rm -rf /churn$((r - 1))
  sync
  echo "round $r $(du -sk /churn$r /seed | awk '{ s += $1 } END { print s }')"
  while [ ! -e /churn-go-$r ]; do sleep 0.05; done
  r=$((r + 1))
done
echo finished
`,
}

// mixedChurn is a service's pattern: each round overwrites 512 random
// 4 KiB blocks of a 32 MiB database file, appends 24 MiB to a log and
// writes a new directory of 1000 small files (4-28 KiB); then, in a burst
// right before a sync, rotates the log (three kept, the oldest deleted)
// and swaps the new directory for the old one, deleted. The footprint is
// read as soon as the sync returned: no time for a trim to catch up.
var mixedChurn = churnWorkload{
	name:   "mixed",
	about:  "20 rounds of: 512 random 4 KiB overwrites of a 32 MiB database file, 24 MiB appended to a log, a new directory of 1000 files of 4-28 KiB; then at once the log rotated (3 kept, the oldest deleted), the old directory deleted and replaced, sync; footprint read right after each round's sync",
	rounds: 20,
	script: `set -eu
dd if=/dev/urandom of=/seed bs=1M count=8 2>/dev/null
dd if=/dev/urandom of=/db bs=1M count=32 2>/dev/null
mkdir -p /log /cache
r=1
while [ $r -le 20 ]; do
  n=0
  while [ $n -lt 512 ]; do
    dd if=/seed of=/db bs=4096 count=1 skip=$((n % 2048)) seek=$((RANDOM % 8192)) conv=notrunc 2>/dev/null
    n=$((n + 1))
  done
  i=0
  while [ $i -lt 96 ]; do head -c 262144 /seed >> /log/app.log; i=$((i + 1)); done
  mkdir /cache.new
  n=0
  while [ $n -lt 1000 ]; do head -c $(( (n % 7 + 1) * 4096 )) /seed > /cache.new/f$n; n=$((n + 1)); done
  rm -f /log/app.log.3
  for g in 2 1; do
    if [ -f /log/app.log.$g ]; then mv /log/app.log.$g /log/app.log.$((g + 1)); fi
  done
  mv /log/app.log /log/app.log.1
  rm -rf /cache
  mv /cache.new /cache
  sync
  echo "round $r $(du -sk /log /cache /db /seed | awk '{ s += $1 } END { print s }')"
  while [ ! -e /churn-go-$r ]; do sleep 0.05; done
  r=$((r + 1))
done
echo finished
`,
}

type churnPoint struct {
	Round     int   `json:"round"`
	Used      int64 `json:"used_bytes"`
	Footprint int64 `json:"footprint_bytes"`
}

type churnSeries struct {
	Snapshotter    string       `json:"snapshotter"`
	Rounds         []churnPoint `json:"rounds"`
	AfterStop      churnPoint   `json:"after_stop"`
	MaxRatio       float64      `json:"max_footprint_to_used"`
	AfterStopRatio float64      `json:"after_stop_footprint_to_used"`
}

// TestChurnInContainerBenchmark runs each churn workload in a real
// container on snug, blockfile (a scratch image of the same 4 GiB quota)
// and overlayfs, in one containerd, and records after every round the
// container's used bytes and what its writable layer costs the host, and
// the same 5 s after the container stopped. Output per workload: JSON, a
// table and a PNG plot in $SNUG_BENCH_OUT. SNUG_BENCH_CHURN picks one
// workload (files, mixed). It runs under `make bench` only.
func TestChurnInContainerBenchmark(t *testing.T) {
	out := os.Getenv("SNUG_BENCH_OUT")
	if out == "" {
		t.Skip("benchmark: run with make bench (SNUG_BENCH_OUT)")
	}
	requireStack(t)
	dir := roottest.TempDir(t)
	const quota = 4 << 30
	scratch := filepath.Join(dir, "scratch.img")
	if b, err := exec.Command("truncate", "-s", fmt.Sprint(quota), scratch).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	if b, err := exec.Command("mkfs.ext4", "-q", "-F", scratch).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	s := startStackWith(t, "[image]\nquota = \"4GiB\"\n",
		"    { platform = \"linux/amd64\", snapshotter = \"blockfile\" },\n",
		fmt.Sprintf("\n[plugins.\"io.containerd.snapshotter.v1.blockfile\"]\n  scratch_file = %q\n  fs_type = \"ext4\"\n", scratch))
	snapshotters := []string{"snug", "blockfile", "overlayfs"}
	for _, sn := range snapshotters {
		s.ctr("images", "import", "--snapshotter", sn, "--base-name", "localhost/churn-"+sn, testImage(t))
	}
	for _, wl := range []churnWorkload{filesChurn, mixedChurn} {
		if only := os.Getenv("SNUG_BENCH_CHURN"); only != "" && only != wl.name {
			continue
		}
		var series []churnSeries
		for _, sn := range snapshotters {
			series = append(series, s.churn(wl, sn, "localhost/churn-"+sn+":latest"))
		}
		writeChurnReport(t, out, wl, series)
		snug := series[0]
		for _, p := range snug.Rounds {
			if limit := p.Used*110/100 + 16<<20; p.Footprint > limit {
				t.Errorf("%s: snug round %d: footprint %d MiB > 1.10 x used + 16 MiB = %d MiB", wl.name, p.Round, p.Footprint>>20, limit>>20)
			}
		}
		if p := snug.AfterStop; p.Footprint > imagefs.PackedFootprint(p.Used) {
			t.Errorf("%s: snug after stop: footprint %d MiB > 1.03 x used + 8 MiB", wl.name, p.Footprint>>20)
		}
	}
}

// churn runs workload wl on snapshotter sn and measures it.
func (s *stack) churn(wl churnWorkload, sn, ref string) churnSeries {
	t := s.t
	id := "churn-" + wl.name + "-" + sn
	cmd := exec.Command(filepath.Join(containerdBin(), "ctr"), s.ctrArgs("run", "--snapshotter", sn, ref, id, "/bin/sh", "-c", wl.script)...)
	cmd.Env = append(os.Environ(), "PATH="+containerdBin()+":/usr/sbin:/usr/bin:/sbin:/bin")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	res := churnSeries{Snapshotter: sn}
	rootfs := filepath.Join(s.dir, "containerd", "state", "io.containerd.runtime.v2.task", "default", id, "rootfs")
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "round" {
			continue
		}
		round, _ := strconv.Atoi(f[1])
		kib, _ := strconv.ParseInt(f[2], 10, 64)
		time.Sleep(wl.settle)
		p := churnPoint{Round: round, Used: kib << 10, Footprint: s.layerFootprint(sn, id)}
		res.Rounds = append(res.Rounds, p)
		res.MaxRatio = max(res.MaxRatio, float64(p.Footprint)/float64(p.Used))
		t.Logf("%s %s round %d: used %d MiB, footprint %d MiB", wl.name, sn, round, p.Used>>20, p.Footprint>>20)
		if err := os.WriteFile(filepath.Join(rootfs, fmt.Sprint("churn-go-", round)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil || len(res.Rounds) != wl.rounds {
		t.Fatalf("%s churn on %s: %v after %d rounds", wl.name, sn, err, len(res.Rounds))
	}
	time.Sleep(5 * time.Second)
	last := res.Rounds[len(res.Rounds)-1]
	res.AfterStop = churnPoint{Round: last.Round, Used: last.Used, Footprint: s.layerFootprint(sn, id)}
	res.AfterStopRatio = float64(res.AfterStop.Footprint) / float64(res.AfterStop.Used)
	t.Logf("%s %s after stop: footprint %d MiB", wl.name, sn, res.AfterStop.Footprint>>20)
	if sn == "snug" {
		// What snug did about the stop, for a reader of a failed goal.
		t.Logf("snug's reclaims and trims during the run:\n%s", grepLines(s.snug.Log(), "reclaim", "trim", "stop"))
	}
	s.ctr("containers", "rm", id)
	return res
}

// layerFootprint is what the writable layer of container id costs the
// host: the allocated bytes of its image file (snug, blockfile) or of its
// overlay upper directory (overlayfs).
func (s *stack) layerFootprint(sn, id string) int64 {
	t := s.t
	out := s.ctr("snapshots", "--snapshotter", sn, "mounts", "/x", id)
	for _, opt := range strings.FieldsFunc(out, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' }) {
		if up, ok := strings.CutPrefix(opt, "upperdir="); ok {
			if img := filepath.Join(filepath.Dir(filepath.Dir(up)), "rw.img"); sn == "snug" {
				return footprintOf(t, img)
			}
			return duAllocated(t, up)
		}
	}
	// blockfile: mount -t ext4 -o loop,... FILE /x
	f := strings.Fields(out)
	for i, w := range f {
		if w == "/x" && i > 0 {
			return footprintOf(t, f[i-1])
		}
	}
	t.Fatalf("cannot tell the writable layer of %s on %s from:\n%s", id, sn, out)
	return 0
}

func duAllocated(t *testing.T, dir string) int64 {
	var n int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

func writeChurnReport(t *testing.T, out string, wl churnWorkload, series []churnSeries) {
	report := map[string]any{
		"command":  "make bench-churn",
		"date":     time.Now().UTC().Format(time.RFC3339),
		"workload": wl.about + "; 4 GiB quota; and 5 s after the container stopped",
		"series":   series,
	}
	js, _ := json.MarshalIndent(report, "", "  ")
	var table strings.Builder
	fmt.Fprintf(&table, "%s\n\n", wl.about)
	fmt.Fprintf(&table, "%-10s %10s %14s %10s %16s %12s\n", "snapshotter", "used MiB", "footprint MiB", "max ratio", "after stop MiB", "after ratio")
	for _, sr := range series {
		last := sr.Rounds[len(sr.Rounds)-1]
		fmt.Fprintf(&table, "%-10s %10d %14d %9.2fx %16d %11.2fx\n", sr.Snapshotter, last.Used>>20, last.Footprint>>20, sr.MaxRatio, sr.AfterStop.Footprint>>20, sr.AfterStopRatio)
	}
	fmt.Fprintf(&table, "used and footprint at round %d; max ratio: highest footprint/used over the %d rounds\nreproduce: make bench-churn\n", wl.rounds, wl.rounds)
	t.Log("\n" + table.String())
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	base := "churn-" + wl.name
	if wl.name == "files" {
		base = "churn-container"
	}
	for name, data := range map[string][]byte{base + ".json": js, base + ".txt": []byte(table.String())} {
		if err := os.WriteFile(filepath.Join(out, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := plotChurn(filepath.Join(out, base+".png"), wl, series); err != nil {
		t.Fatal(err)
	}
}

func footprintOf(t *testing.T, path string) int64 {
	n, err := imagefs.Footprint(path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// grepLines returns the lines of s holding any of words.
func grepLines(s string, words ...string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(line, w) {
				b.WriteString(line)
				b.WriteByte('\n')
				break
			}
		}
	}
	return b.String()
}
