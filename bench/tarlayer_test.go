package bench

import (
	"archive/tar"
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// tarLayerRun is one way of writing one layer tar, measured.
type tarLayerRun struct {
	Layer     string  `json:"layer"`
	Way       string  `json:"way"`
	Seconds   float64 `json:"seconds"`
	Footprint int64   `json:"footprint_bytes"`
	PeakHeap  uint64  `json:"peak_heap_bytes,omitempty"`
	// CPUSeconds is the process's CPU time while it ran (the writer's
	// own, in this process; not the loop device's kernel threads).
	CPUSeconds float64 `json:"cpu_seconds,omitempty"`
}

// TestLayerFromTarBenchmark measures writing a layer from its
// (uncompressed) tar, to the disk, two ways, on two layers: the big layer of
// the benchmarks (~200 MiB in 10,000 files of 1-40 KiB) and 200,000 empty
// files in 200 directories:
//   - from the tar (imagefs.LayerFromTar, snug's differ), with direct I/O,
//     with the peak of the Go heap (sampled every 5 ms) and the CPU time
//     while it runs;
//   - the same through the host's page cache (imagefs.ThroughPageCache,
//     what a file system without direct I/O gets);
//   - through the kernel (containerd's overlay applier, archive.Apply, into
//     a fresh thin image mounted on a loop device, then its syncfs), what
//     unpacking into a snapshot's rw image does.
//
// Each way runs three times in turns; medians. The layers written stay on
// the disk until the layer's last round, as a daemon's layers do (their
// pages stay in the page cache, and a new layer takes new ones).
func TestLayerFromTarBenchmark(t *testing.T) {
	out := benchOut(t, "mkfs.ext4", "e2fsck")
	ctx := context.Background()
	dir := roottest.TempDir(t)
	layers := []struct {
		name string
		make func(tw *tar.Writer)
	}{
		{"200 MiB in 10,000 files", writeBigLayerTar},
		{"200,000 empty files", writeEmptyFilesTar},
	}
	var runs []tarLayerRun
	for _, l := range layers {
		tarball := filepath.Join(dir, "layer.tar")
		f, err := os.Create(tarball)
		if err != nil {
			t.Fatal(err)
		}
		tw := tar.NewWriter(f)
		l.make(tw)
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		var fromTar, cached, kernel []tarLayerRun
		for round := range 3 {
			img := filepath.Join(dir, fmt.Sprintf("from-tar-%d.img", round))
			fromTar = append(fromTar, timeLayerFromTar(t, ctx, tarball, img, l.name, "from the tar (LayerFromTar, snug's differ)"))
			img = filepath.Join(dir, fmt.Sprintf("page-cache-%d.img", round))
			cached = append(cached, timeLayerFromTar(t, ctx, tarball, img, l.name, "from the tar, through the page cache", imagefs.ThroughPageCache()))
			kernel = append(kernel, timeKernelApply(t, ctx, dir, tarball, l.name, round))
		}
		runs = append(runs, median(fromTar), median(cached), median(kernel))
		written, _ := filepath.Glob(filepath.Join(dir, "*.img"))
		for _, img := range written {
			os.Remove(img)
		}
		os.Remove(tarball)
	}

	var table strings.Builder
	fmt.Fprintf(&table, "%-26s %-48s %9s %9s %14s %14s\n", "layer", "way", "seconds", "cpu s", "footprint MiB", "peak heap MiB")
	for _, r := range runs {
		heap, cpu := "-", "-"
		if r.PeakHeap > 0 {
			heap = fmt.Sprintf("%.0f", float64(r.PeakHeap)/(1<<20))
		}
		if r.CPUSeconds > 0 {
			cpu = fmt.Sprintf("%.2f", r.CPUSeconds)
		}
		fmt.Fprintf(&table, "%-26s %-48s %9.2f %9s %14.1f %14s\n", r.Layer, r.Way, r.Seconds, cpu, float64(r.Footprint)/(1<<20), heap)
	}
	fmt.Fprintf(&table, "medians of 3 runs, each to the disk; reproduce: make bench-imagefs (TestLayerFromTarBenchmark)\n")
	t.Log("\n" + table.String())
	js, _ := json.MarshalIndent(map[string]any{"runs": runs, "when": time.Now().UTC(),
		"reproduce_with": "make bench-imagefs (TestLayerFromTarBenchmark)"}, "", "  ")
	os.MkdirAll(out, 0o755)
	os.WriteFile(filepath.Join(out, "tarlayer.json"), js, 0o644)
	os.WriteFile(filepath.Join(out, "tarlayer.txt"), []byte(table.String()), 0o644)
}

// timeLayerFromTar writes tarball's layer with LayerFromTar.
func timeLayerFromTar(t *testing.T, ctx context.Context, tarball, img, layer, way string, opts ...imagefs.LayerOption) tarLayerRun {
	t.Helper()
	f, err := os.Open(tarball)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	runtime.GC()
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	start, cpu := time.Now(), cpuTime(t)
	l, err := imagefs.LayerFromTar(ctx, bufio.NewReaderSize(f, 1<<20), img, opts...)
	took, cpu := time.Since(start), cpuTime(t)-cpu
	close(stop)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	return tarLayerRun{Layer: layer, Way: way, Seconds: took.Seconds(), Footprint: l.Bytes, PeakHeap: peak.Load(), CPUSeconds: cpu.Seconds()}
}

// timeKernelApply unpacks tarball into a fresh thin image's upper dir with
// containerd's overlay applier and syncs it.
func timeKernelApply(t *testing.T, ctx context.Context, dir, tarball, layer string, round int) tarLayerRun {
	t.Helper()
	img := filepath.Join(dir, fmt.Sprintf("kernel-%d.img", round))
	if err := imagefs.Create(ctx, img, imagefs.CreateOptions{Quota: 4 << 30, Window: 1 << 30, Inodes: 400_000, DirectIO: true}); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, fmt.Sprintf("kernel-%d", round))
	os.Mkdir(mnt, 0o755)
	m, err := imagefs.Mount(ctx, img, mnt, imagefs.MountOptions{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		m.Unmount(context.Background())
		os.Remove(img)
	}()
	upper := filepath.Join(mnt, "upper")
	os.Mkdir(upper, 0o755)
	f, err := os.Open(tarball)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	if _, err := archive.Apply(ctx, upper, bufio.NewReaderSize(f, 1<<20), archive.WithConvertWhiteout(archive.OverlayConvertWhiteout)); err != nil {
		t.Fatal(err)
	}
	roottest.Syncfs(t, upper)
	took := time.Since(start)
	fp, _ := imagefs.Footprint(img)
	return tarLayerRun{Layer: layer, Way: "through the kernel (containerd's applier, sync)", Seconds: took.Seconds(), Footprint: fp}
}

// median is the run of median time.
func median(runs []tarLayerRun) tarLayerRun {
	sorted := slices.SortedFunc(slices.Values(runs), func(a, b tarLayerRun) int { return cmp.Compare(a.Seconds, b.Seconds) })
	return sorted[len(sorted)/2]
}

// writeBigLayerTar writes writeLayer's content as a tar.
func writeBigLayerTar(tw *tar.Writer) {
	buf := make([]byte, 40<<10)
	for i := range buf {
		buf[i] = byte(i*7 + i>>8)
	}
	for d := range 100 {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("d%03d/", d), Mode: 0o755})
		for f := range 100 {
			n := ((d*100+f)%40 + 1) << 10
			buf[0] = byte(f)
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%03d/f%03d", d, f), Mode: 0o644, Size: int64(n)})
			tw.Write(buf[:n])
		}
	}
}

// writeEmptyFilesTar writes 200 directories of 1,000 empty files.
func writeEmptyFilesTar(tw *tar.Writer) {
	for d := range 200 {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("d%03d/", d), Mode: 0o755})
		for f := range 1000 {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%03d/f%04d", d, f), Mode: 0o644})
		}
	}
}

// cpuTime is the CPU time this process used so far, user and system.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
