package bench

import (
	"os"
	"testing"

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
