package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
	"golang.org/x/sys/unix"
)

// commitOption is one way to turn an active snapshot's image into a
// read-only layer, measured on the same content.
type commitOption struct {
	Name      string        `json:"name"`
	Seconds   float64       `json:"seconds"`
	Footprint int64         `json:"footprint_bytes"`
	Apparent  int64         `json:"apparent_bytes"`
	Took      time.Duration `json:"-"`
}

// TestCommitOptionsBenchmark measures the two ways snug could commit a
// layer, on a layer of ~200 MiB in 10,000 files written into a 1 GiB thin
// image's upper dir:
//   - pack: imagefs.CreateLayer, mkfs.ext4 -d of the upper dir into a fresh
//     image without journal (what snug does);
//   - shrink: reclaim the thin image, unmount it, and shrink it in place to
//     its content with imagefs.Shrink (e2fsck, resize2fs on a copy).
func TestCommitOptionsBenchmark(t *testing.T) {
	out := benchOut(t, "mkfs.ext4", "e2fsck", "resize2fs")
	ctx := context.Background()
	dir := roottest.TempDir(t)
	img := filepath.Join(dir, "rw.img")
	if err := imagefs.Create(ctx, img, imagefs.CreateOptions{Quota: 1 << 30, Window: 256 << 20, DirectIO: true}); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	m, err := imagefs.Mount(ctx, img, mnt, imagefs.MountOptions{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmount(ctx)
	stop := make(chan struct{})
	kctx, cancel := context.WithCancel(ctx)
	go func() {
		w := imagefs.NewWatcher(10*time.Millisecond, imagefs.Observer{})
		w.Add("commit", m, imagefs.Policy{Headroom: 128 << 20})
		w.Run(kctx)
		close(stop)
	}()
	upper := filepath.Join(mnt, "upper")
	content := writeLayer(t, upper)
	cancel()
	<-stop
	unix.Sync()

	var opts []commitOption
	layer := filepath.Join(dir, "layer.img")
	start := time.Now()
	if _, err := imagefs.CreateLayer(ctx, layer, upper); err != nil {
		t.Fatal(err)
	}
	opts = append(opts, measured("pack (mkfs.ext4 -d, snug's choice)", time.Since(start), layer))

	start = time.Now()
	if _, err := m.Reclaim(ctx, imagefs.ReclaimOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := imagefs.Stat(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	target := (st.UsedBytes + st.UsedBytes/8 + 32<<20) / 4096 * 4096
	if err := imagefs.Shrink(ctx, img, target, true); err != nil {
		t.Fatal(err)
	}
	opts = append(opts, measured("shrink in place (reclaim, resize2fs)", time.Since(start), img))

	var table strings.Builder
	fmt.Fprintf(&table, "commit of a %d MiB layer in %d files\n", content.bytes>>20, content.files)
	fmt.Fprintf(&table, "%-38s %10s %14s %14s\n", "option", "seconds", "footprint MiB", "apparent MiB")
	for _, o := range opts {
		fmt.Fprintf(&table, "%-38s %10.3f %14.1f %14.1f\n", o.Name, o.Seconds, float64(o.Footprint)/(1<<20), float64(o.Apparent)/(1<<20))
	}
	t.Log("\n" + table.String())
	js, _ := json.MarshalIndent(map[string]any{
		"layer_bytes": content.bytes, "layer_files": content.files, "options": opts,
		"reproduce_with": "make bench-imagefs (TestCommitOptionsBenchmark)", "when": time.Now().UTC(),
	}, "", "  ")
	os.MkdirAll(out, 0o755)
	os.WriteFile(filepath.Join(out, "commit.json"), js, 0o644)
	os.WriteFile(filepath.Join(out, "commit.txt"), []byte(table.String()), 0o644)
}

func measured(name string, took time.Duration, path string) commitOption {
	var st unix.Stat_t
	unix.Stat(path, &st)
	return commitOption{Name: name, Seconds: took.Seconds(), Footprint: st.Blocks * 512, Apparent: st.Size}
}

type layerContent struct {
	bytes int64
	files int
}

// writeLayer writes the benchmark layer: 100 directories of 100 files of
// 1 to 40 KiB, as scripts/testimage.sh's big layer.
func writeLayer(t *testing.T, dir string) layerContent {
	t.Helper()
	var c layerContent
	buf := make([]byte, 40<<10)
	for i := range buf {
		buf[i] = byte(i*7 + i>>8)
	}
	for d := range 100 {
		sub := filepath.Join(dir, fmt.Sprintf("d%03d", d))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := range 100 {
			n := ((d*100+f)%40 + 1) << 10
			buf[0] = byte(f)
			if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%03d", f)), buf[:n], 0o644); err != nil {
				t.Fatal(err)
			}
			c.bytes += int64(n)
			c.files++
		}
	}
	return c
}
