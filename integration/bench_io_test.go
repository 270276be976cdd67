package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/internal/roottest"
)

// The container's I/O workloads of make bench-io. Each runs inside a
// running container (ctr task exec) on its root filesystem, so every byte
// takes the container's own storage path: overlayfs on the host disk, or
// snug's overlay on its thin image on a loop device. fio and sqlite3 are
// the host's (Debian's), run from a read-only bind mount of /usr through
// the host's dynamic loader, so the test image needs neither.
type ioWorkload struct {
	Name string // key in the JSON
	Desc string // row of the table
	Unit string
	// Goal is the ratio to overlayfs the issue asks for.
	Goal float64
}

var ioWorkloads = []ioWorkload{
	{"seq_write", "sequential write 1 GiB, bs 1M, end_fsync", "MiB/s", 0.95},
	{"rand_write_fsync", "random 4 KiB writes, fsync after each", "IOPS", 0.90},
	{"rand_read", "random 4 KiB reads, cold cache", "IOPS", 0.95},
	{"seq_read", "sequential read 1 GiB, cold cache", "MiB/s", 0.95},
	// A database's data file: blocks written before, overwritten in place
	// (rand_write_fsync writes a new file, so each write also allocates,
	// in the image and on the host).
	{"rand_overwrite_fsync", "random 4 KiB overwrites in place, fsync each", "IOPS", 0.90},
	{"meta", "create+write+fsync+delete 2000 small files", "files/s", 0.90},
	{"sqlite", "SQLite: 500 inserts, one transaction each", "tx/s", 0.90},
}

type ioReport struct {
	Command      string                          `json:"command"`
	Date         string                          `json:"date"`
	Kernel       string                          `json:"kernel"`
	Rounds       int                             `json:"rounds"`
	SnugPolicy   string                          `json:"snug_policy"`
	SnugClass    string                          `json:"snug_class,omitempty"`
	SnugbPolicy  string                          `json:"snugb_policy,omitempty"`
	SnugbBinary  string                          `json:"snugb_binary,omitempty"`
	Snapshotters []string                        `json:"snapshotters"`
	Samples      map[string]map[string][]float64 `json:"samples"` // workload -> snapshotter -> values
	Medians      map[string]map[string]float64   `json:"medians"`
	Ratios       map[string]map[string]float64   `json:"ratios_to_overlayfs"`
	// FootprintMiB is what each container's writable layer costs the
	// host disk: "fresh" right after its start, "end" after the rounds
	// (the 1 GiB file of the sequential rows is still there).
	FootprintMiB map[string]map[string]float64 `json:"footprint_mib"`
	// Devices is the block device under each container's writable layer
	// (a loop device, or the host disk under overlayfs's upper directory).
	Devices map[string]string `json:"devices"`
	// FlushesPerFsync is, per round, how many cache flushes that device
	// completed per fsync'd write of rand_write_fsync: at least one where
	// an fsync reaches the disk; none where the device drops flushes and
	// the figure was bought with durability.
	FlushesPerFsync map[string][]float64 `json:"flushes_per_fsync"`
}

// TestIOBenchmark measures a container's I/O on snug and on containerd's
// own snapshotters in one containerd: overlayfs (the reference), blockfile
// and erofs's ext4 writable layer (the peers built like snug: an ext4
// image on a loop device). The snapshotters take turns workload by
// workload, round robin, so the machine's noise hits them alike; medians
// and ratios to overlayfs go to $SNUG_BENCH_OUT as JSON, a table and a
// plot. $SNUG_BENCH_IO_POLICY adds TOML to snug's policy, to measure a
// policy option against the default; $SNUG_BENCH_IO_VARIANT, when set,
// adds a second snug daemon ("snugb") with that TOML added to its policy,
// so two policies take turns in the same run, and
// $SNUG_BENCH_IO_VARIANT_BINARY runs that daemon from another build of
// snug (two versions of the code in one run); $SNUG_BENCH_IO_CLASS=NAME
// adds a second container on snug ("snug.NAME") whose snapshot label picks
// class NAME, which $SNUG_BENCH_IO_POLICY defines; SNUG_BENCH_ROUNDS sets
// the rounds (3).
// It runs under make bench-io only.
func TestIOBenchmark(t *testing.T) {
	out := os.Getenv("SNUG_BENCH_OUT")
	if out == "" {
		t.Skip("benchmark: run with make bench-io (SNUG_BENCH_OUT)")
	}
	requireStack(t)
	roottest.Require(t, "fio", "sqlite3", "mkfs.erofs")
	rounds := envInt(t, "SNUG_BENCH_ROUNDS", 3)
	policy := os.Getenv("SNUG_BENCH_IO_POLICY")

	dir := roottest.TempDir(t)
	tools := filepath.Join(dir, "tools")
	if err := os.MkdirAll(tools, 0o755); err != nil {
		t.Fatal(err)
	}
	buildIowork(t, tools)
	var sql strings.Builder
	sql.WriteString("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT);\n")
	for i := range 500 {
		fmt.Fprintf(&sql, "INSERT INTO t (v) VALUES ('row %d of the benchmark, a short text as a web app stores it');\n", i)
	}
	if err := os.WriteFile(filepath.Join(tools, "inserts.sql"), []byte(sql.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	// blockfile copies its scratch image per snapshot; erofs makes an ext4
	// writable layer of default_size: 2 GiB each, room for the 1 GiB file.
	scratch := filepath.Join(dir, "scratch.img")
	if b, err := exec.Command("truncate", "-s", "2G", scratch).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	if b, err := exec.Command("mkfs.ext4", "-q", "-F", scratch).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	unpack := "    { platform = \"linux/amd64\", snapshotter = \"erofs\" },\n" +
		"    { platform = \"linux/amd64\", snapshotter = \"blockfile\" },\n"
	extra := fmt.Sprintf("\n[plugins.\"io.containerd.snapshotter.v1.blockfile\"]\n  scratch_file = %q\n  fs_type = \"ext4\"\n", scratch) +
		"\n[plugins.\"io.containerd.snapshotter.v1.erofs\"]\n  default_size = \"2GiB\"\n"
	snapshotters := []string{"overlayfs", "snug", "blockfile", "erofs"}
	variant, hasVariant := os.LookupEnv("SNUG_BENCH_IO_VARIANT")
	if hasVariant {
		b := startDaemonBinary(t, roottest.TempDir(t), variant, os.Getenv("SNUG_BENCH_IO_VARIANT_BINARY"))
		unpack += "    { platform = \"linux/amd64\", snapshotter = \"snugb\" },\n"
		extra += fmt.Sprintf("\n[proxy_plugins.snugb]\n  type = \"snapshot\"\n  address = %q\n  platform = \"linux/amd64\"\n", b.Address)
		snapshotters = append(snapshotters, "snugb")
	}
	class := os.Getenv("SNUG_BENCH_IO_CLASS")
	if class != "" {
		snapshotters = append(snapshotters, "snug."+class)
	}
	s := startStackWith(t, policy, unpack, extra)
	for _, sn := range snapshotters {
		// snug.CLASS is a second container on snug, its snapshot labelled
		// with the class: the same daemon, the class's policy.
		snapshotter, run := sn, []string{"run", "-d"}
		if c, ok := strings.CutPrefix(sn, "snug."); ok {
			snapshotter = "snug"
			run = append(run, "--snapshotter-label", config.LabelClass+"="+c)
		} else {
			s.ctr("images", "import", "--snapshotter", sn, "--base-name", "localhost/io-"+sn, testImage(t))
		}
		s.ctr(append(run, "--snapshotter", snapshotter,
			"--mount", "type=bind,src=/usr,dst=/.bench/usr,options=rbind:ro",
			"--mount", "type=bind,src="+tools+",dst=/.bench/tools,options=rbind:ro",
			"localhost/io-"+snapshotter+":latest", "io-"+sn, "/bin/sleep", "1000000")...)
		s.exec("io-"+sn, "/bin/mkdir", "-p", "/bench")
	}
	if class != "" {
		if io := s.activeImage("io-snug." + class).IO; io == "" {
			t.Fatalf("class %s's container: no I/O mode in snug status", class)
		}
	}
	checkIOStack(t, s)

	rep := ioReport{
		Command: "make bench-io", Date: time.Now().UTC().Format(time.RFC3339), Kernel: kernelRelease(),
		Rounds: rounds, SnugPolicy: policy, SnugClass: class, SnugbPolicy: variant, SnugbBinary: os.Getenv("SNUG_BENCH_IO_VARIANT_BINARY"), Snapshotters: snapshotters,
		Samples:         map[string]map[string][]float64{},
		FootprintMiB:    map[string]map[string]float64{"fresh": {}, "end": {}},
		Devices:         map[string]string{},
		FlushesPerFsync: map[string][]float64{},
	}
	for _, sn := range snapshotters {
		dev, _, err := writableLayer("io-" + sn)
		if err != nil {
			t.Fatal(err)
		}
		rep.Devices[sn] = dev
	}
	footprints := func(stage string) {
		for _, sn := range snapshotters {
			b, err := writableFootprint("io-" + sn)
			if err != nil {
				t.Fatal(err)
			}
			rep.FootprintMiB[stage][sn] = float64(b) / (1 << 20)
		}
	}
	footprints("fresh")
	for _, w := range ioWorkloads {
		rep.Samples[w.Name] = map[string][]float64{}
	}
	for r := range rounds {
		for wi, w := range ioWorkloads {
			for _, sn := range rotate(snapshotters, r+wi) {
				flushes := deviceFlushes(t, rep.Devices[sn])
				v, fsyncs := s.ioRun(w.Name, "io-"+sn)
				rep.Samples[w.Name][sn] = append(rep.Samples[w.Name][sn], v)
				if fsyncs > 0 {
					per := float64(deviceFlushes(t, rep.Devices[sn])-flushes) / fsyncs
					rep.FlushesPerFsync[sn] = append(rep.FlushesPerFsync[sn], per)
					t.Logf("round %d %s %s: %.2f flushes of %s per fsync", r+1, w.Name, sn, per, rep.Devices[sn])
				}
				t.Logf("round %d %s %s: %.1f %s", r+1, w.Name, sn, v, w.Unit)
			}
		}
	}
	footprints("end")
	rep.Medians, rep.Ratios = map[string]map[string]float64{}, map[string]map[string]float64{}
	for _, w := range ioWorkloads {
		rep.Medians[w.Name], rep.Ratios[w.Name] = map[string]float64{}, map[string]float64{}
		for _, sn := range snapshotters {
			rep.Medians[w.Name][sn] = median(rep.Samples[w.Name][sn])
			rep.Ratios[w.Name][sn] = rep.Medians[w.Name][sn] / rep.Medians[w.Name]["overlayfs"]
		}
	}
	writeIOReport(t, out, rep)
}

// checkIOStack makes sure each container's root is what it claims: snug's
// on a thin image, the peers' on a loop-mounted ext4, overlayfs's on the
// host disk. A benchmark of the wrong storage would mislead.
func checkIOStack(t *testing.T, s *stack) {
	t.Helper()
	im := s.activeImage("io-snug")
	if im.Mountpoint == "" {
		t.Fatalf("snug's container has no mounted image: %+v", im)
	}
	for _, sn := range []string{"blockfile", "erofs"} {
		mnt := s.exec("io-"+sn, "/bin/cat", "/proc/self/mountinfo")
		root := ""
		for _, line := range strings.Split(mnt, "\n") {
			if f := strings.Fields(line); len(f) > 4 && f[4] == "/" {
				root = line
			}
		}
		if !strings.Contains(root, "ext4") && !strings.Contains(root, "overlay") {
			t.Fatalf("%s's container root is not ext4 or an overlay on it: %q", sn, root)
		}
	}
}

var execSeq atomic.Int64

// exec runs a command in a running container and returns its stdout.
func (s *stack) exec(container string, args ...string) string {
	s.t.Helper()
	id := fmt.Sprintf("e%d", execSeq.Add(1))
	return s.ctr(append([]string{"tasks", "exec", "--exec-id", id, container}, args...)...)
}

// hostTool is the command line that runs a host binary from /usr inside a
// container: through the host's loader, with the directories of the
// libraries ldd finds for it, all named by their real paths under the bind
// mount (the host's /lib64 link to the loader is absolute, and the
// container has no /lib).
func hostTool(name string, args ...string) []string {
	under := func(p string) string {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		return "/.bench" + p
	}
	bin := "/usr/bin/" + name
	loader := "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
	var dirs []string
	out, _ := exec.Command("ldd", bin).Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			if d := under(filepath.Dir(f[2])); !slices.Contains(dirs, d) {
				dirs = append(dirs, d)
			}
		case len(f) >= 1 && strings.Contains(f[0], "/ld-linux"):
			loader = f[0]
		}
	}
	return append([]string{under(loader), "--library-path", strings.Join(dirs, ":"), under(bin)}, args...)
}

// dropCaches writes back and drops every page cache, the containers'
// images' and the host's: a read then comes from the storage.
func dropCaches(t *testing.T) {
	t.Helper()
	if err := exec.Command("sync").Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200); err != nil {
		t.Fatal(err)
	}
}

// deviceFlushes is the cache flushes dev has completed so far.
func deviceFlushes(t *testing.T, dev string) uint64 {
	t.Helper()
	n, err := roottest.Flushes(dev)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ioRun runs one workload in a container and returns its figure and, for
// the fsync'd writes, how many fsyncs it made.
func (s *stack) ioRun(name, container string) (value, fsyncs float64) {
	t := s.t
	t.Helper()
	fio := func(args ...string) map[string]any {
		out := s.exec(container, hostTool("fio", append([]string{"--output-format=json", "--ioengine=psync", "--name=" + name}, args...)...)...)
		var res struct {
			Jobs []map[string]any `json:"jobs"`
		}
		if i := strings.Index(out, "{"); i < 0 || json.Unmarshal([]byte(out[i:]), &res) != nil || len(res.Jobs) == 0 {
			t.Fatalf("fio %s in %s: cannot read its output:\n%s", name, container, out)
		}
		return res.Jobs[0]
	}
	field := func(job map[string]any, dir, key string) float64 {
		m, _ := job[dir].(map[string]any)
		v, ok := m[key].(float64)
		if !ok || v <= 0 {
			t.Fatalf("fio %s in %s: no %s.%s in %v", name, container, dir, key, job[dir])
		}
		return v
	}
	const seqFile = "--filename=/bench/seq"
	switch name {
	case "seq_write":
		s.exec(container, "/bin/rm", "-f", "/bench/seq")
		return field(fio(seqFile, "--rw=write", "--bs=1M", "--size=1g", "--end_fsync=1"), "write", "bw") / 1024, 0
	case "rand_write_fsync":
		defer s.exec(container, "/bin/rm", "-f", "/bench/rw")
		job := fio("--filename=/bench/rw", "--rw=randwrite", "--bs=4k", "--size=128m", "--fsync=1", "--runtime=10", "--time_based")
		return field(job, "write", "iops"), field(job, "write", "total_ios")
	case "rand_read":
		dropCaches(t)
		return field(fio(seqFile, "--rw=randread", "--bs=4k", "--size=1g", "--runtime=10", "--time_based"), "read", "iops"), 0
	case "seq_read":
		dropCaches(t)
		return field(fio(seqFile, "--rw=read", "--bs=1M", "--size=1g"), "read", "bw") / 1024, 0
	case "rand_overwrite_fsync":
		// The 1 GiB file seq_write wrote this round, in place.
		return field(fio(seqFile, "--rw=randwrite", "--bs=4k", "--size=1g", "--overwrite=1", "--fsync=1", "--runtime=10", "--time_based"), "write", "iops"), 0
	case "meta":
		var res struct {
			FilesPerSecond float64 `json:"files_per_second"`
		}
		out := s.exec(container, "/.bench/tools/iowork", "meta", "/bench/meta", "2000")
		if err := json.Unmarshal([]byte(out), &res); err != nil || res.FilesPerSecond <= 0 {
			t.Fatalf("iowork meta in %s: %v\n%s", container, err, out)
		}
		return res.FilesPerSecond, 0
	case "sqlite":
		s.exec(container, "/bin/rm", "-f", "/bench/t.db", "/bench/t.db-journal")
		var res struct {
			Seconds float64 `json:"seconds"`
		}
		out := s.exec(container, append([]string{"/.bench/tools/iowork", "time"}, hostTool("sqlite3", "/bench/t.db", ".read /.bench/tools/inserts.sql")...)...)
		if err := json.Unmarshal([]byte(out), &res); err != nil || res.Seconds <= 0 {
			t.Fatalf("sqlite in %s: %v\n%s", container, err, out)
		}
		if n := strings.TrimSpace(s.exec(container, hostTool("sqlite3", "/bench/t.db", "SELECT count(*) FROM t")...)); n != "500" {
			t.Fatalf("sqlite in %s: %s rows, want 500", container, n)
		}
		return 500 / res.Seconds, 0
	}
	t.Fatalf("unknown workload %s", name)
	return 0, 0
}

// buildIowork builds bench/iowork, static, into dir.
func buildIowork(t *testing.T, dir string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "iowork"), "./bench/iowork")
	cmd.Dir = repoPath(".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build iowork: %v\n%s", err, b)
	}
}

func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

func writeIOReport(t *testing.T, out string, rep ioReport) {
	t.Helper()
	js, _ := json.MarshalIndent(rep, "", "  ")
	var tb strings.Builder
	fmt.Fprintf(&tb, "container I/O, medians of %d rounds, round robin in one containerd; kernel %s\n", rep.Rounds, rep.Kernel)
	if rep.SnugPolicy != "" {
		fmt.Fprintf(&tb, "snug policy: %s\n", strings.ReplaceAll(strings.TrimSpace(rep.SnugPolicy), "\n", "; "))
	}
	if rep.SnugClass != "" {
		fmt.Fprintf(&tb, "snug.%s: a second container on snug, its snapshot labelled with class %s\n", rep.SnugClass, rep.SnugClass)
	}
	if slices.Contains(rep.Snapshotters, "snugb") {
		fmt.Fprintf(&tb, "snugb: a second snug, policy: %s\n", strings.ReplaceAll(strings.TrimSpace(rep.SnugbPolicy), "\n", "; "))
		if rep.SnugbBinary != "" {
			fmt.Fprintf(&tb, "snugb runs %s\n", rep.SnugbBinary)
		}
	}
	fmt.Fprintf(&tb, "\n%-46s %-8s", "workload", "unit")
	for _, sn := range rep.Snapshotters {
		fmt.Fprintf(&tb, " %10s", sn)
	}
	others := slices.DeleteFunc(slices.Clone(rep.Snapshotters), func(sn string) bool { return sn == "overlayfs" })
	for _, sn := range others {
		fmt.Fprintf(&tb, " %10s", sn+"/ovl")
	}
	fmt.Fprintf(&tb, " %6s %s\n", "goal", "met")
	for _, w := range ioWorkloads {
		fmt.Fprintf(&tb, "%-46s %-8s", w.Desc, w.Unit)
		for _, sn := range rep.Snapshotters {
			fmt.Fprintf(&tb, " %10.1f", rep.Medians[w.Name][sn])
		}
		for _, sn := range others {
			fmt.Fprintf(&tb, " %9.2fx", rep.Ratios[w.Name][sn])
		}
		met := "yes"
		if rep.Ratios[w.Name]["snug"] < w.Goal {
			met = "no"
		}
		fmt.Fprintf(&tb, " %5.2fx %s\n", w.Goal, met)
	}
	fmt.Fprintf(&tb, "\n%-46s %-8s", "host disk of the writable layer", "")
	for _, sn := range rep.Snapshotters {
		fmt.Fprintf(&tb, " %10s", sn)
	}
	tb.WriteString("\n")
	for _, stage := range []struct{ key, desc string }{{"fresh", "right after the container's start"}, {"end", "after the rounds (1 GiB file kept)"}} {
		fmt.Fprintf(&tb, "%-46s %-8s", stage.desc, "MiB")
		for _, sn := range rep.Snapshotters {
			fmt.Fprintf(&tb, " %10.1f", rep.FootprintMiB[stage.key][sn])
		}
		tb.WriteString("\n")
	}
	fmt.Fprintf(&tb, "%-46s %-8s", "cache flushes per fsync'd 4 KiB write", "median")
	for _, sn := range rep.Snapshotters {
		fmt.Fprintf(&tb, " %10.2f", median(rep.FlushesPerFsync[sn]))
	}
	fmt.Fprintf(&tb, "\n%-46s %-8s", "  counted at the device", "")
	for _, sn := range rep.Snapshotters {
		fmt.Fprintf(&tb, " %10s", strings.TrimPrefix(rep.Devices[sn], "/dev/"))
	}
	tb.WriteString("\n")
	fmt.Fprintf(&tb, "reproduce: make bench-io")
	if rep.SnugPolicy != "" {
		fmt.Fprintf(&tb, " SNUG_BENCH_IO_POLICY=%s", ansiQuote(rep.SnugPolicy))
	}
	if rep.SnugClass != "" {
		fmt.Fprintf(&tb, " SNUG_BENCH_IO_CLASS=%s", rep.SnugClass)
	}
	if slices.Contains(rep.Snapshotters, "snugb") {
		fmt.Fprintf(&tb, " SNUG_BENCH_IO_VARIANT=%s", ansiQuote(rep.SnugbPolicy))
		if rep.SnugbBinary != "" {
			fmt.Fprintf(&tb, " SNUG_BENCH_IO_VARIANT_BINARY=%s", rep.SnugbBinary)
		}
	}
	tb.WriteString("\n")
	t.Log("\n" + tb.String())
	name := "io"
	if v := os.Getenv("SNUG_BENCH_IO_NAME"); v != "" {
		name = "io-" + v
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	for file, data := range map[string][]byte{name + ".json": js, name + ".txt": []byte(tb.String())} {
		if err := os.WriteFile(filepath.Join(out, file), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := plotIO(filepath.Join(out, name+".png"), rep); err != nil {
		t.Fatal(err)
	}
}

// ansiQuote quotes s for bash as $'...', so a reproduce line with a
// multi-line policy can be pasted as it is.
func ansiQuote(s string) string {
	return "$'" + strings.NewReplacer(`\`, `\\`, "'", `\'`, "\n", `\n`).Replace(s) + "'"
}
