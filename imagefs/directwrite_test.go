package imagefs

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
)

// TestDirectWriter writes runs of bytes at their offsets through a
// directWriter (aligned or not, contiguous or not, small or larger than a
// chunk, rewritten, read back in the middle, with direct I/O refused part
// way) and finds the file holding exactly what a plain write would have.
func TestDirectWriter(t *testing.T) {
	type op struct {
		off, n int64
		read   bool // sync and read the file back before this write
		refuse bool // direct I/O refused from this write on
	}
	const mib = 1 << 20
	seq := func(start, chunk, total int64) []op {
		var ops []op
		for off := start; off < start+total; off += chunk {
			ops = append(ops, op{off: off, n: min(chunk, start+total-off)})
		}
		return ops
	}
	for _, tc := range []struct {
		name string
		ops  []op
		// at least this many direct writes
		direct int64
	}{
		{"aligned chunks", seq(0, 512<<10, 3*mib+512<<10), 3},
		{"unaligned head and tail", seq(100, 512<<10, 3*mib), 2},
		{"small writes gathered", seq(4096, 1000, 2*mib+5000), 2},
		{"runs with holes between", []op{{off: 0, n: mib + 4096}, {off: 2 * mib, n: 3 * mib}, {off: 6*mib + 10, n: 5000}}, 4},
		{"rewritten", append(seq(0, 512<<10, 2*mib), op{off: 4096, n: mib}, op{off: 100, n: 10}), 3},
		{"read in the middle", append(seq(0, 512<<10, mib+100), op{off: mib + 100, n: mib, read: true}), 1},
		{"refused part way", append(seq(0, mib, 2*mib), op{off: 2 * mib, n: 3 * mib, refuse: true}, op{off: 5*mib + 7, n: 9}), 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "file")
			f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			w := newDirectWriter(f, path)
			if w == nil {
				t.Skip("the file system of the test's temporary directory refuses direct I/O")
			}
			var want []byte
			before := directWrites.Load()
			for _, o := range tc.ops {
				if o.read {
					if err := w.sync(); err != nil {
						t.Fatal(err)
					}
					got, err := os.ReadFile(path)
					if err != nil || !bytes.Equal(got, want) {
						t.Fatalf("before the write at %d: %d bytes read (%v), want %d, same: %v", o.off, len(got), err, len(want), bytes.Equal(got, want))
					}
				}
				if o.refuse {
					// What was handed over before is written directly
					// first: the refusal is of what comes after.
					if err := w.sync(); err != nil {
						t.Fatal(err)
					}
					w.buffered.Store(true)
				}
				p := make([]byte, o.n)
				rand.Read(p)
				if end := o.off + o.n; int64(len(want)) < end {
					want = append(want, make([]byte, end-int64(len(want)))...)
				}
				copy(want[o.off:], p)
				if err := w.put(p, o.off); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.close(); err != nil {
				t.Fatal(err)
			}
			if n := directWrites.Load() - before; n < tc.direct {
				t.Errorf("%d direct writes, want at least %d", n, tc.direct)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				i := 0
				for i < min(len(got), len(want)) && got[i] == want[i] {
					i++
				}
				t.Errorf("the file holds %d bytes, want %d; first difference at %d", len(got), len(want), i)
			}
		})
	}
}
