package imagefs

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
)

// TestMountOptionsReachExt4: each policy option shows in the mounted
// filesystem's own options (what ext4 took, not what was asked), and the
// options every image gets are there with it.
func TestMountOptionsReachExt4(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    MountOptions
		want []string
		not  []string
	}{
		{"default", MountOptions{DirectIO: true}, []string{"errors=remount-ro"}, []string{"discard", "data=writeback", "journal_async_commit"}},
		{"discard", MountOptions{DirectIO: true, Discard: true}, []string{"errors=remount-ro", "discard"}, []string{"data=writeback"}},
		{"async commit", MountOptions{DirectIO: true, AsyncCommit: true}, []string{"errors=remount-ro", "data=writeback", "journal_async_commit"}, []string{"discard"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, dir := newImage(t, 128*mib, 64*mib)
			mnt := filepath.Join(dir, "mnt")
			if err := os.MkdirAll(mnt, 0o755); err != nil {
				t.Fatal(err)
			}
			m, err := Mount(context.Background(), path, mnt, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Unmount(context.Background())
			if async, err := m.AsyncCommit(); err != nil || async != tc.o.AsyncCommit {
				t.Errorf("AsyncCommit() = %v, %v; mounted with async_commit %v", async, err, tc.o.AsyncCommit)
			}
			infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mnt))
			if err != nil || len(infos) != 1 {
				t.Fatalf("mountinfo of %s: %v %v", mnt, infos, err)
			}
			opts := strings.Split(infos[0].VFSOptions, ",")
			for _, w := range tc.want {
				if !slices.Contains(opts, w) {
					t.Errorf("option %s missing from %s", w, infos[0].VFSOptions)
				}
			}
			for _, n := range tc.not {
				if slices.Contains(opts, n) {
					t.Errorf("option %s in %s", n, infos[0].VFSOptions)
				}
			}
		})
	}
}
