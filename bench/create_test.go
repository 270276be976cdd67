package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/imagefs"
)

// TestTemplateBenchmark times the ways to make a new rw image, one after
// the other, round robin, at the default policy's size (10 GiB quota,
// 1 GiB window):
//   - mkfs: imagefs.Create (mkfs.ext4, then a private mount to place the
//     balloon);
//   - template: imagefs.Templates.Create (a sparse copy of a template made
//     once, its new UUID written into its superblocks in place), what the
//     snapshotter and its pool use;
//   - template+tune2fs: the same followed by `tune2fs -U random`, what a
//     copy cost before 2026-12-06, when tune2fs gave it its UUID.
//
// It reports medians and p90 (ms) and each image's host footprint.
func TestTemplateBenchmark(t *testing.T) {
	out, dir, tpls := templatesBench(t)
	ctx := context.Background()
	o := imagefs.CreateOptions{Quota: 10 << 30, Window: 1 << 30, DirectIO: true}
	// The template itself, made once: not counted.
	if err := tpls.Create(ctx, filepath.Join(dir, "first"), o); err != nil {
		t.Fatal(err)
	}
	type way struct {
		Name      string    `json:"name"`
		MS        []float64 `json:"ms"`
		Footprint int64     `json:"footprint_bytes"`
	}
	ways := []*way{{Name: "mkfs"}, {Name: "template"}, {Name: "template+tune2fs"}}
	const rounds = 20
	for r := range rounds {
		for i := range ways {
			w := ways[(i+r)%len(ways)]
			p := filepath.Join(dir, fmt.Sprintf("%s-%d", w.Name, r))
			start := time.Now()
			var err error
			switch w.Name {
			case "mkfs":
				err = imagefs.Create(ctx, p, o)
			case "template":
				err = tpls.Create(ctx, p, o)
			default:
				if err = tpls.Create(ctx, p, o); err == nil {
					if b, terr := exec.Command("tune2fs", "-U", "random", p).CombinedOutput(); terr != nil {
						err = fmt.Errorf("tune2fs: %w: %s", terr, b)
					}
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			w.MS = append(w.MS, float64(time.Since(start).Microseconds())/1000)
			var st unix.Stat_t
			unix.Stat(p, &st)
			w.Footprint = st.Blocks * 512
			os.Remove(p)
		}
	}
	pct := func(v []float64, p float64) float64 {
		s := slices.Clone(v)
		slices.Sort(s)
		return s[int(p*float64(len(s)-1))]
	}
	var table strings.Builder
	fmt.Fprintf(&table, "new rw image, 10 GiB quota, 1 GiB window, %d rounds (ms)\n", rounds)
	fmt.Fprintf(&table, "%-17s %8s %8s %14s\n", "way", "median", "p90", "footprint KiB")
	for _, w := range ways {
		fmt.Fprintf(&table, "%-17s %8.1f %8.1f %14d\n", w.Name, pct(w.MS, 0.5), pct(w.MS, 0.9), w.Footprint>>10)
	}
	fmt.Fprintf(&table, "template / mkfs (medians): %.2f; template / template+tune2fs: %.2f\nreproduce: make bench-imagefs (TestTemplateBenchmark)\n", pct(ways[1].MS, 0.5)/pct(ways[0].MS, 0.5), pct(ways[1].MS, 0.5)/pct(ways[2].MS, 0.5))
	t.Log("\n" + table.String())
	js, _ := json.MarshalIndent(map[string]any{"ways": ways, "quota": o.Quota, "window": o.Window,
		"reproduce_with": "make bench-imagefs (TestTemplateBenchmark)", "when": time.Now().UTC()}, "", "  ")
	os.MkdirAll(out, 0o755)
	os.WriteFile(filepath.Join(out, "create.json"), js, 0o644)
	os.WriteFile(filepath.Join(out, "create.txt"), []byte(table.String()), 0o644)
}
