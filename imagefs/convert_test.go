package imagefs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestConvertToLayerKeepsTheUpperDir: a thin image whose upper dir holds
// an unpacked layer becomes the layer's image in place: everything the
// upper dir held shows under LayerDir of the read-only mount, the overlay's
// work dir is gone, the image is clean, and only the image's own metadata
// is added on the host. A conversion a crash cut after the upper dir's
// rename runs again to the end; one whose destination exists is refused
// and leaves the image where it was.
func TestConvertToLayerKeepsTheUpperDir(t *testing.T) {
	ctx := context.Background()
	path, dir := newImage(t, 1<<30, 128*mib)
	m := mountImage(t, path, dir)
	data := writeUpperTree(t, filepath.Join(m.Dir, "upper"))
	if err := os.MkdirAll(filepath.Join(m.Dir, "work", "work"), 0); err != nil {
		t.Fatal(err)
	}
	layer, err := LayerOf(m, filepath.Join(m.Dir, "upper"))
	if err != nil {
		t.Fatal(err)
	}
	if layer.Inodes != upperTreeInodes {
		t.Errorf("inodes = %d, want %d", layer.Inodes, upperTreeInodes)
	}
	// 3 MiB of data, a 1 GiB sparse file, ext4's metadata and journal.
	if layer.Bytes > 16<<20 {
		t.Errorf("layer footprint %d MiB for 3 MiB of data", layer.Bytes>>20)
	}

	// Cut after the rename inside: the upper dir is the layer dir already.
	if err := os.Rename(filepath.Join(m.Dir, "upper"), filepath.Join(m.Dir, LayerDir)); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "layer.img")
	if err := os.WriteFile(dst, []byte("in the way"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ConvertToLayer(ctx, m, "upper", "work", dst); !errors.Is(err, ErrExists) {
		t.Fatalf("convert onto an existing file: %v, want ErrExists", err)
	}
	if !IsMountPoint(m.Dir) {
		t.Fatal("a refused conversion unmounted the image")
	}
	os.Remove(dst)
	if err := ConvertToLayer(ctx, m, "upper", "work", dst); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the thin image's name is still there: %v", err)
	}
	if devs, _ := FindLoops(dst); len(devs) != 0 {
		t.Errorf("still attached after the conversion: %v", devs)
	}
	requireClean(t, dst)
	requirePrivate(t, dst)
	if fp := fileFootprint(t, dst); fp > layer.Bytes+mib {
		t.Errorf("layer image %d MiB on the host, %d MiB measured before the conversion", fp>>20, layer.Bytes>>20)
	}
	root := mountLayer(t, dst, filepath.Join(dir, "ro"))
	checkLayerTree(t, root, data)
	for _, gone := range []string{"upper", "work"} {
		if _, err := os.Lstat(filepath.Join(filepath.Dir(root), gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still in the layer image: %v", gone, err)
		}
	}
}
