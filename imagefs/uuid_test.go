package imagefs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"

	"github.com/snugfs/snug/internal/roottest"
)

func TestSparseBackupGroups(t *testing.T) {
	for _, tc := range []struct {
		groups int64
		want   []int64
	}{
		{0, nil},
		{1, nil},
		{2, []int64{1}},
		{4, []int64{1, 3}},
		{10, []int64{1, 3, 5, 7, 9}},
		{256, []int64{1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243}},
		{344, []int64{1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343}},
	} {
		if got := sparseBackupGroups(tc.groups); !slices.Equal(got, tc.want) {
			t.Errorf("sparseBackupGroups(%d) = %v, want %v", tc.groups, got, tc.want)
		}
	}
}

// TestSetUUIDInSuperblocks gives images of several layouts a new UUID in
// place and checks the result with e2fsprogs: the superblocks written are
// exactly the ones dumpe2fs lists, each one opens (its checksum matches)
// and carries the new UUID, and e2fsck finds the image clean. A layout it
// does not handle (no metadata_csum_seed: the UUID seeds every checksum)
// is refused before anything is written.
func TestSetUUIDInSuperblocks(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck", "dumpe2fs")
	ctx := context.Background()
	dir := roottest.TempDir(t)
	const uuid = "0b6c3a52-9d1e-4f7a-8c2b-5e4d3c2b1a09"
	for _, tc := range []struct {
		name, size string
		mkfs       []string
		handled    bool
	}{
		{"snug's layout, 32 GiB", "32G", []string{"-b", "4096", "-O", "^resize_inode,metadata_csum_seed"}, true},
		{"1 KiB blocks", "300M", []string{"-b", "1024", "-O", "metadata_csum_seed"}, true},
		{"sparse_super2", "8G", []string{"-b", "4096", "-O", "sparse_super2,metadata_csum_seed"}, true},
		{"every group a backup", "2G", []string{"-b", "4096", "-O", "^sparse_super,^resize_inode,metadata_csum_seed"}, true},
		{"no metadata_csum_seed", "2G", []string{"-b", "4096"}, false},
		{"no metadata_csum", "2G", []string{"-b", "4096", "-O", "^metadata_csum"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".img")
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(p, mustSize(t, tc.size)); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"-F", "-q", "-t", "ext4", "-E", "lazy_itable_init=1,nodiscard"}, tc.mkfs...)
			if run, err := runTool(ctx, "mkfs.ext4", append(args, p)...); err != nil || run.ExitCode != 0 {
				t.Fatalf("mkfs.ext4: %v %+v", err, run)
			}
			before, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			err = setUUIDInSuperblocks(f, uuid)
			f.Close()
			if !tc.handled {
				// Any write would have moved the file's mtime.
				after, serr := os.Stat(p)
				if serr != nil {
					t.Fatal(serr)
				}
				if written := !after.ModTime().Equal(before.ModTime()); !errors.Is(err, errUUIDLayout) || written {
					t.Fatalf("got %v, written %v; want errUUIDLayout and the image untouched", err, written)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			requireClean(t, p)
			dump, err := runTool(ctx, "dumpe2fs", p)
			if err != nil || dump.ExitCode != 0 {
				t.Fatalf("dumpe2fs: %v %+v", err, dump)
			}
			bs := regexp.MustCompile(`(?m)^Block size:\s+(\d+)$`).FindStringSubmatch(dump.Stdout)
			var listed []string
			for _, m := range regexp.MustCompile(`(?:Primary|Backup) superblock at (\d+)`).FindAllStringSubmatch(dump.Stdout, -1) {
				listed = append(listed, m[1])
			}
			if bs == nil || len(listed) < 2 {
				t.Fatalf("dumpe2fs lists no block size or backups:\n%.2000s", dump.Stdout)
			}
			sb, err := ReadSuperblock(p)
			if err != nil {
				t.Fatal(err)
			}
			if got := sb.UUIDString(); got != uuid {
				t.Errorf("primary superblock: UUID %s, want %s", got, uuid)
			}
			primary := make([]byte, superblockSize)
			pf, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer pf.Close()
			if _, err := pf.ReadAt(primary, superblockOffset); err != nil {
				t.Fatal(err)
			}
			offsets, err := superblockOffsets(primary, sb)
			if err != nil {
				t.Fatal(err)
			}
			var written []string
			for i, off := range offsets {
				block := off / sb.BlockSize
				if i == 0 {
					block = 0
					if sb.BlockSize == 1024 {
						block = 1
					}
				}
				written = append(written, strconv.FormatInt(block, 10))
			}
			if !slices.Equal(written, listed) {
				t.Errorf("superblocks written at blocks %v, dumpe2fs lists %v", written, listed)
			}
			for _, b := range listed[1:] {
				run, err := runTool(ctx, "dumpe2fs", "-h", "-o", "superblock="+b, "-o", "blocksize="+bs[1], p)
				if err != nil || run.ExitCode != 0 {
					t.Fatalf("dumpe2fs of the backup at block %s: %v %+v", b, err, run)
				}
				if !containsLine(run.Stdout, "Filesystem UUID:", uuid) {
					t.Errorf("the backup at block %s does not carry the UUID:\n%.600s", b, run.Stdout)
				}
			}
		})
	}
}

// mustSize parses a size such as "300M" or "32G".
func mustSize(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s[:len(s)-1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	switch s[len(s)-1] {
	case 'M':
		return n << 20
	case 'G':
		return n << 30
	}
	t.Fatalf("size %q", s)
	return 0
}
