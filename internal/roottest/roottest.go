// Package roottest gates tests that need root and the real kernel (loop
// devices, ext4, e2fsprogs) behind one helper.
//
// Outside root such tests skip with a reason. Under `make test` and CI,
// SNUG_REQUIRE_ROOT=1 turns every such skip into a failure: a missing
// dependency must never let the suite pass by skipping.
package roottest

import (
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// Require skips t (or fails it, with SNUG_REQUIRE_ROOT=1) unless the process
// is root and every named tool is installed.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	strict := os.Getenv("SNUG_REQUIRE_ROOT") == "1"
	miss := func(format string, args ...any) {
		t.Helper()
		if strict {
			t.Fatalf(format+" (SNUG_REQUIRE_ROOT=1)", args...)
		}
		t.Skipf(format, args...)
	}
	if os.Geteuid() != 0 {
		miss("needs root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err := exec.LookPath("/usr/sbin/" + tool); err != nil {
				miss("needs %s", tool)
			}
		}
	}
}

// TempDir returns a fresh directory and registers a cleanup that, even when
// the test fails, unmounts everything below it and detaches every loop device
// backed by a file below it, before the directory is removed.
func TempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "snug-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Sweep(dir); err != nil {
			t.Errorf("cleanup %s: %v", dir, err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup %s: %v", dir, err)
		}
	})
	return dir
}

// Syncfs commits the filesystem holding dir (syncfs(2)): its dirty data is
// written back and its journal committed, so frees are final and the
// image file's allocation reads true.
func Syncfs(t testing.TB, dir string) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}
