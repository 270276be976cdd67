package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snugfs/snug/imagefs"
)

// TestCeilingBenchmark measures what a ceiling above the quota costs (the
// filesystem is made at the ceiling, so the quota can be raised online):
// for a 10 GiB quota and ceilings from 10 GiB to 1 TiB, the time to make
// the image with mkfs and from a template, its fresh footprint, the time
// to mount and unmount it and to check it (e2fsck -fn), each a median of 5,
// and its inode count. Results in bench/results/ceiling.{json,txt}.
func TestCeilingBenchmark(t *testing.T) {
	out, dir, tpls := templatesBench(t)
	ctx := context.Background()
	const quota = 10 << 30
	type row struct {
		Ceiling     int64   `json:"ceiling_bytes"`
		MkfsMS      float64 `json:"mkfs_ms"`
		TemplateMS  float64 `json:"template_ms"`
		Footprint   int64   `json:"footprint_bytes"`
		MountMS     float64 `json:"mount_unmount_ms"`
		CheckMS     float64 `json:"check_ms"`
		InodesTotal int64   `json:"inodes_total"`
	}
	median := func(n int, fn func() error) float64 {
		var ms []float64
		for range n {
			start := time.Now()
			if err := fn(); err != nil {
				t.Fatal(err)
			}
			ms = append(ms, float64(time.Since(start).Microseconds())/1000)
		}
		slices.Sort(ms)
		return ms[len(ms)/2]
	}
	var rows []row
	for _, ceiling := range []int64{10 << 30, 20 << 30, 32 << 30, 64 << 30, 256 << 30, 1 << 40} {
		o := imagefs.CreateOptions{Quota: quota, Ceiling: ceiling, Window: 1 << 30, DirectIO: true}
		r := row{Ceiling: ceiling}
		i := 0
		next := func() string { i++; return filepath.Join(dir, fmt.Sprintf("c%d-%d", ceiling>>30, i)) }
		r.MkfsMS = median(3, func() error { p := next(); defer os.Remove(p); return imagefs.Create(ctx, p, o) })
		if err := tpls.Create(ctx, next(), o); err != nil { // makes the template
			t.Fatal(err)
		}
		r.TemplateMS = median(5, func() error { p := next(); defer os.Remove(p); return tpls.Create(ctx, p, o) })
		img := next()
		if err := tpls.Create(ctx, img, o); err != nil {
			t.Fatal(err)
		}
		fp, err := imagefs.Footprint(img)
		if err != nil {
			t.Fatal(err)
		}
		r.Footprint = fp
		mnt := filepath.Join(dir, "mnt")
		os.MkdirAll(mnt, 0o755)
		r.MountMS = median(5, func() error {
			m, err := imagefs.Mount(ctx, img, mnt, imagefs.MountOptions{DirectIO: true})
			if err != nil {
				return err
			}
			if st, err := m.Stat(); err == nil {
				r.InodesTotal = st.InodesTotal
			}
			return m.Unmount(ctx)
		})
		r.CheckMS = median(5, func() error {
			res, err := imagefs.Check(ctx, img)
			if err == nil && !res.Clean() {
				err = fmt.Errorf("e2fsck -fn %s: exit %d", img, res.ExitCode)
			}
			return err
		})
		os.Remove(img)
		rows = append(rows, r)
	}
	var table strings.Builder
	fmt.Fprintf(&table, "a 10 GiB quota made at a higher ceiling (the filesystem's size), medians (ms)\n")
	fmt.Fprintf(&table, "%-8s %8s %10s %14s %14s %9s %12s\n", "ceiling", "mkfs", "template", "footprint KiB", "mount+umount", "e2fsck", "inodes")
	for _, r := range rows {
		fmt.Fprintf(&table, "%-8s %8.1f %10.1f %14d %14.1f %9.1f %12d\n", fmt.Sprintf("%dGiB", r.Ceiling>>30),
			r.MkfsMS, r.TemplateMS, r.Footprint>>10, r.MountMS, r.CheckMS, r.InodesTotal)
	}
	fmt.Fprintf(&table, "reproduce: make bench-imagefs (TestCeilingBenchmark)\n")
	t.Log("\n" + table.String())
	js, _ := json.MarshalIndent(map[string]any{"rows": rows, "quota": quota,
		"reproduce_with": "make bench-imagefs (TestCeilingBenchmark)", "when": time.Now().UTC()}, "", "  ")
	os.MkdirAll(out, 0o755)
	os.WriteFile(filepath.Join(out, "ceiling.json"), js, 0o644)
	os.WriteFile(filepath.Join(out, "ceiling.txt"), []byte(table.String()), 0o644)
}
