package bench

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// benchOut is where a benchmark writes its results ($SNUG_BENCH_OUT); it
// skips the benchmark when that is not set (make bench sets it), and
// requires the tools it names.
func benchOut(t *testing.T, tools ...string) string {
	t.Helper()
	out := os.Getenv("SNUG_BENCH_OUT")
	if out == "" {
		t.Skip("benchmark: run it with `make bench`")
	}
	roottest.Require(t, tools...)
	return out
}

// templatesBench starts a benchmark of image creation: its results
// directory, a scratch directory swept when it ends, and templates there.
func templatesBench(t *testing.T) (out, dir string, tpls *imagefs.Templates) {
	t.Helper()
	out = benchOut(t, "mkfs.ext4", "e2fsck", "tune2fs")
	dir = roottest.TempDir(t)
	tpls, err := imagefs.NewTemplates(context.Background(), filepath.Join(dir, "templates"))
	if err != nil {
		t.Fatal(err)
	}
	return out, dir, tpls
}
