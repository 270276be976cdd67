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

// TestCommitOptionsBenchmark measures the ways snug could commit a layer
// just unpacked: ~200 MiB in 10,000 files written into a 1 GiB thin image's
// upper dir, still dirty in the page cache as containerd's unpack leaves
// it, to the layer on the host disk (each option waits for the disk, as
// Commit does). Each option gets an image of its own with the same content:
//   - pack: imagefs.CreateLayer, mkfs.ext4 -d of the upper dir into a fresh
//     image without journal, then Discard of the thin image (never
//     written): what snug did before;
//   - convert in place: imagefs.LayerOf and imagefs.ConvertToLayer, what
//     Commit does: the upper dir renamed to the layer dir, a syncfs (the
//     content written once), the unmount, the file renamed;
//   - shrink in place: reclaim the thin image, unmount it, and shrink it to
//     its content with imagefs.Shrink (e2fsck, resize2fs on a copy).
func TestCommitOptionsBenchmark(t *testing.T) {
	out := benchOut(t, "mkfs.ext4", "e2fsck", "resize2fs")
	ctx := context.Background()
	dir := roottest.TempDir(t)
	var (
		opts    []commitOption
		content layerContent
	)

	m, upper := unpacked(t, ctx, dir, "pack", &content)
	layer := filepath.Join(dir, "layer.img")
	start := time.Now()
	if _, err := imagefs.CreateLayer(ctx, layer, upper); err != nil {
		t.Fatal(err)
	}
	if err := m.Discard(ctx); err != nil {
		t.Fatal(err)
	}
	opts = append(opts, measured("pack (mkfs.ext4 -d)", time.Since(start), layer))

	m, upper = unpacked(t, ctx, dir, "convert", &content)
	converted := filepath.Join(dir, "converted.img")
	start = time.Now()
	if _, err := imagefs.LayerOf(m, upper); err != nil {
		t.Fatal(err)
	}
	if err := imagefs.ConvertToLayer(ctx, m, "upper", "work", converted); err != nil {
		t.Fatal(err)
	}
	opts = append(opts, measured("convert in place (snug's choice)", time.Since(start), converted))

	m, _ = unpacked(t, ctx, dir, "shrink", &content)
	start = time.Now()
	if _, err := m.Reclaim(ctx, imagefs.ReclaimOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := imagefs.Stat(ctx, m.Image)
	if err != nil {
		t.Fatal(err)
	}
	target := (st.UsedBytes + st.UsedBytes/8 + 32<<20) / 4096 * 4096
	if err := imagefs.Shrink(ctx, m.Image, target, true); err != nil {
		t.Fatal(err)
	}
	opts = append(opts, measured("shrink in place (reclaim, resize2fs)", time.Since(start), m.Image))

	var table strings.Builder
	fmt.Fprintf(&table, "commit of a %d MiB layer in %d files, from its unpack (dirty in the page cache) to the disk\n", content.bytes>>20, content.files)
	fmt.Fprintf(&table, "%-38s %10s %14s %14s\n", "option", "seconds", "footprint MiB", "apparent MiB")
	for _, o := range opts {
		fmt.Fprintf(&table, "%-38s %10.3f %14.1f %14.1f\n", o.Name, o.Seconds, float64(o.Footprint)/(1<<20), float64(o.Apparent)/(1<<20))
	}
	fmt.Fprintf(&table, "reproduce: make bench-imagefs (TestCommitOptionsBenchmark)\n")
	t.Log("\n" + table.String())
	js, _ := json.MarshalIndent(map[string]any{
		"layer_bytes": content.bytes, "layer_files": content.files, "options": opts,
		"reproduce_with": "make bench-imagefs (TestCommitOptionsBenchmark)", "when": time.Now().UTC(),
	}, "", "  ")
	os.MkdirAll(out, 0o755)
	os.WriteFile(filepath.Join(out, "commit.json"), js, 0o644)
	os.WriteFile(filepath.Join(out, "commit.txt"), []byte(table.String()), 0o644)
}

// unpacked makes a 1 GiB thin image in dir/name, mounts it and writes the
// benchmark layer into its upper dir with a window keeper running, as an
// unpack into an active snapshot does; the content is left dirty in the
// page cache. The image is unmounted when the test ends if it still is.
func unpacked(t *testing.T, ctx context.Context, dir, name string, c *layerContent) (*imagefs.Mounted, string) {
	t.Helper()
	img := filepath.Join(dir, name+".img")
	if err := imagefs.Create(ctx, img, imagefs.CreateOptions{Quota: 1 << 30, Window: 256 << 20, DirectIO: true}); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, name)
	os.Mkdir(mnt, 0o755)
	m, err := imagefs.Mount(ctx, img, mnt, imagefs.MountOptions{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if imagefs.IsMountPoint(mnt) {
			m.Unmount(context.Background())
		}
	})
	kctx, cancel := context.WithCancel(ctx)
	stop := make(chan struct{})
	go func() {
		w := imagefs.NewWatcher(10*time.Millisecond, imagefs.Observer{})
		w.Add(name, m, imagefs.Policy{Headroom: 128 << 20})
		w.Run(kctx)
		close(stop)
	}()
	upper := filepath.Join(mnt, "upper")
	*c = writeLayer(t, upper)
	cancel()
	<-stop
	return m, upper
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
