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
}

// TestLayerFromTarBenchmark measures writing a layer from its
// (uncompressed) tar, to the disk, two ways, on two layers: the big layer of
// the benchmarks (~200 MiB in 10,000 files of 1-40 KiB) and 200,000 empty
// files in 200 directories:
//   - from the tar (imagefs.LayerFromTar, snug's differ), with the peak of
//     the Go heap while it runs (sampled every 5 ms);
//   - through the kernel (containerd's overlay applier, archive.Apply, into
//     a fresh thin image mounted on a loop device, then its syncfs), what
//     unpacking into a snapshot's rw image does.
//
// Each way runs three times in turns; medians.
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
		var fromTar, kernel []tarLayerRun
		for round := range 3 {
			img := filepath.Join(dir, fmt.Sprintf("from-tar-%d.img", round))
			fromTar = append(fromTar, timeLayerFromTar(t, ctx, tarball, img, l.name))
			os.Remove(img)
			kernel = append(kernel, timeKernelApply(t, ctx, dir, tarball, l.name, round))
		}
		runs = append(runs, median(fromTar), median(kernel))
		os.Remove(tarball)
	}

	var table strings.Builder
	fmt.Fprintf(&table, "%-26s %-48s %9s %14s %14s\n", "layer", "way", "seconds", "footprint MiB", "peak heap MiB")
	for _, r := range runs {
		heap := "-"
		if r.PeakHeap > 0 {
			heap = fmt.Sprintf("%.0f", float64(r.PeakHeap)/(1<<20))
		}
		fmt.Fprintf(&table, "%-26s %-48s %9.2f %14.1f %14s\n", r.Layer, r.Way, r.Seconds, float64(r.Footprint)/(1<<20), heap)
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
func timeLayerFromTar(t *testing.T, ctx context.Context, tarball, img, layer string) tarLayerRun {
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
	start := time.Now()
	l, err := imagefs.LayerFromTar(ctx, bufio.NewReaderSize(f, 1<<20), img)
	took := time.Since(start)
	close(stop)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	return tarLayerRun{Layer: layer, Way: "from the tar (LayerFromTar, snug's differ)", Seconds: took.Seconds(), Footprint: l.Bytes, PeakHeap: peak.Load()}
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
