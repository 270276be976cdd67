package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/imagefs"
	"github.com/snugfs/snug/internal/roottest"
)

// FuzzSnapshotKeys sends arbitrary snapshot keys and names (containerd
// passes what its clients give) through a real snapshotter: Prepare, Stat,
// Commit, View and Remove. None may crash it, write outside its state
// directory or leave anything behind; whatever it accepts must come back
// as given, in Walk and Stat. Paths are made from numeric ids only, never
// from a key, so "..", slashes, NUL or very long keys are just names.
func FuzzSnapshotKeys(f *testing.F) {
	for _, seed := range [][2]string{
		{"a", "b"},
		{"..", "../.."},
		{"../../../etc/passwd", "/etc/shadow"},
		{"a/b/c", "a/../../b"},
		{"\x00", "x\x00y"},
		{"\xff\xfe\xfd", "\xc3\x28"},
		{strings.Repeat("k", 5000), strings.Repeat("/..", 2000)},
		{"", "empty-key"},
		{"same", "same"},
		{"default/3/sha256:abc", "k8s.io/7/extract-123 sha256:def"},
	} {
		f.Add(seed[0], seed[1])
	}
	roottest.Require(f, "mkfs.ext4", "e2fsck")
	// Each fuzzing worker is a process of its own, and the fuzzing engine
	// kills them at the end without running cleanups: their state is
	// named by pid, and a worker sweeps what dead ones left.
	sweepFuzzRoots(f)
	parent := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d", fuzzRootPrefix, os.Getpid()))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { removeFuzzRoot(parent) })
	root := filepath.Join(parent, "state")
	sn, err := New(context.Background(), testConfig(root))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { sn.Close() })
	f.Fuzz(func(t *testing.T, key, name string) {
		ctx := context.Background()
		defer requireOnlyState(t, sn, parent, root)
		if _, err := sn.Prepare(ctx, key, ""); err != nil {
			return // refused: nothing may be left (checked above)
		}
		defer sn.Remove(ctx, key)
		if info, err := sn.Stat(ctx, key); err != nil || info.Name != key || info.Kind != snapshots.KindActive {
			t.Fatalf("Stat(%q) = %+v, %v", key, info, err)
		}
		if err := sn.Commit(ctx, name, key); err != nil {
			return
		}
		defer sn.Remove(ctx, name)
		if info, err := sn.Stat(ctx, name); err != nil || info.Name != name || info.Kind != snapshots.KindCommitted {
			t.Fatalf("Stat(%q) after commit = %+v, %v", name, info, err)
		}
		view := name + "\x00view"
		if _, err := sn.View(ctx, view, name); err == nil {
			if err := sn.Remove(ctx, view); err != nil {
				t.Fatalf("Remove(%q): %v", view, err)
			}
		}
		if err := sn.Remove(ctx, name); err != nil {
			t.Fatalf("Remove(%q): %v", name, err)
		}
	})
}

// fuzzRootPrefix names FuzzSnapshotKeys's state directories, pid appended.
const fuzzRootPrefix = "snug-fuzz-keys-"

// sweepFuzzRoots unmounts and deletes the state of fuzzing workers that are
// gone.
func sweepFuzzRoots(t testing.TB) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), fuzzRootPrefix+"*"))
	for _, dir := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), fuzzRootPrefix))
		if err != nil || pid == os.Getpid() || unix.Kill(pid, 0) == nil {
			continue
		}
		if err := removeFuzzRoot(dir); err != nil {
			t.Errorf("sweep %s: %v", dir, err)
		}
	}
}

func removeFuzzRoot(dir string) error {
	if err := imagefs.UnmountBelow(context.Background(), dir); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// TestSweepFuzzLeftovers removes what killed FuzzSnapshotKeys workers left
// (make fuzz runs it after the fuzzer).
func TestSweepFuzzLeftovers(t *testing.T) {
	roottest.Require(t)
	sweepFuzzRoots(t)
}

// requireOnlyState fails unless the parent of the state directory holds
// the state directory alone, and the state directory holds no snapshot
// once every snapshot is removed.
func requireOnlyState(t *testing.T, sn *Snapshotter, parent, root string) {
	t.Helper()
	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != filepath.Base(root) {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("written beside the state directory: %q", names)
	}
	n := 0
	sn.Walk(context.Background(), func(context.Context, snapshots.Info) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d snapshots left", n)
	}
	// Removals delete their images in the background: wait for them, not
	// Cleanup, which would delete a directory left by a leak as well.
	if _, err := sn.removing.wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	dirs, _ := os.ReadDir(filepath.Join(root, "snapshots"))
	for _, d := range dirs {
		if !isNumericID(d.Name()) {
			t.Fatalf("snapshot directory %q is not named by an id", d.Name())
		}
	}
	if len(dirs) != 0 {
		t.Fatalf("%d snapshot directories left", len(dirs))
	}
}
