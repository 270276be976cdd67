package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/internal/roottest"
)

// freePort is a TCP port nothing listens on right now.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitLog waits until the daemon's log contains want n times.
func waitLog(t *testing.T, d *daemon, want string, n int) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if strings.Count(d.Log(), want) >= n {
			return
		}
	}
	t.Fatalf("daemon log lacks %q (x%d):\n%s", want, n, lastLines(d.Log(), 20))
}

// TestReloadAndMetrics: SIGHUP puts an edited policy in force (a new class
// becomes usable), a broken file is refused with its line and the policy in
// force stays, and the metrics endpoint serves per-image gauges and totals.
func TestReloadAndMetrics(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck")
	dir := roottest.TempDir(t)
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	base := fmt.Sprintf("metrics_address = %q\n[image]\nquota = \"256MiB\"\n[window]\ninitial = \"32MiB\"\nheadroom = \"32MiB\"\n", metrics)
	d := startDaemon(t, dir, base)
	sn := d.Snapshotter(t)
	ctx := context.Background()
	label := snapshots.WithLabels(map[string]string{"containerd.io/snapshot/snug.policy": "wide"})
	if _, err := sn.Prepare(ctx, "before", "", label); err == nil || !strings.Contains(err.Error(), "no such class") {
		t.Fatalf("class before it is defined: %v", err)
	}

	policy, err := os.ReadFile(d.Config)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(d.Config, append(policy, "[policies.wide.window]\nheadroom = \"96MiB\"\n"...), 0o600)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "policy reloaded", 1)
	if _, err := sn.Prepare(ctx, "after", "", label); err != nil {
		t.Fatalf("class after the reload: %v", err)
	}
	if st := statusByName(t, d, "after"); st.Class != "wide" || st.FreeBytes < 95<<20 {
		t.Errorf("new snapshot: class %q, free %d MiB; want wide, 96 MiB", st.Class, st.FreeBytes>>20)
	}

	os.WriteFile(d.Config, append(policy, "[window]\nheadroom = \"lots\"\n"...), 0o600)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "policy reload refused", 1)
	if !strings.Contains(lastLines(d.Log(), 5), "line") {
		t.Errorf("refused reload does not name the line:\n%s", lastLines(d.Log(), 5))
	}
	if _, err := sn.Prepare(ctx, "still", "", label); err != nil {
		t.Fatalf("the policy in force was lost by a bad reload: %v", err)
	}

	requireMetrics(t, metrics,
		`snug_image_footprint_bytes{id="`, `snug_image_window_bytes{`, `snug_image_used_bytes{`, `snug_image_quota_bytes{`,
		`snug_images{kind="active"} 2`, "snug_grows_total ", "snug_reclaimed_bytes_total ", "snug_window_full_total ",
		"snug_flushes_dropped_total ",
		"snug_reclaims_skipped_total ", "snug_pool_ready_images ", "snug_pool_mounted_images ", "snug_pool_target_images ",
		`snug_layers_applied_total{way="tar"} `,
		"process_resident_memory_bytes ")
}

// statusByName is the status of the snapshot whose name ends with name.
func statusByName(t *testing.T, d *daemon, name string) api.ImageStatus {
	t.Helper()
	for _, im := range d.Status(t) {
		if strings.HasSuffix(im.Snapshot, name) {
			return im
		}
	}
	t.Fatalf("no status for %s", name)
	return api.ImageStatus{}
}

// readMetrics returns the text /metrics at addr serves.
func readMetrics(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// metricValue reads /metrics at addr and returns the value of the metric
// name (one without labels); it fails t if there is none.
func metricValue(t *testing.T, addr, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(readMetrics(t, addr), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no metric %s at %s", name, addr)
	return 0
}

// requireMetrics reads /metrics at addr and fails t for each of wants it
// does not contain.
func requireMetrics(t *testing.T, addr string, wants ...string) {
	t.Helper()
	body := readMetrics(t, addr)
	for _, want := range wants {
		if !strings.Contains(body, want) {
			name, _, _ := strings.Cut(want, " ")
			var have []string
			for _, line := range strings.Split(body, "\n") {
				if strings.HasPrefix(line, strings.TrimRight(name, "{")) {
					have = append(have, line)
				}
			}
			t.Errorf("metrics lack %q; they have %q", want, have)
		}
	}
}
