package imagefs

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// validSuperblock is a minimal superblock of a 64 MiB filesystem in 4 KiB blocks.
func validSuperblock() []byte {
	b := make([]byte, superblockSize)
	le := binary.LittleEndian
	le.PutUint32(b[0x0:], 16384)  // inodes
	le.PutUint32(b[0x4:], 16384)  // blocks
	le.PutUint32(b[0xC:], 10000)  // free blocks
	le.PutUint32(b[0x10:], 16000) // free inodes
	le.PutUint32(b[0x18:], 2)     // 4 KiB blocks
	le.PutUint16(b[0x38:], ext4Magic)
	le.PutUint16(b[0x3A:], 1)
	copy(b[0x78:], "snug\x00")
	return b
}

func TestParseSuperblock(t *testing.T) {
	sb, err := parseSuperblock(validSuperblock(), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if sb.BlockSize != 4096 || sb.Size() != 64<<20 || sb.Label != "snug" || sb.HasErrors() {
		t.Fatalf("%+v", sb)
	}
	for _, tc := range []struct {
		name   string
		mutate func([]byte)
		size   int64
	}{
		{"no magic", func(b []byte) { b[0x38] = 0 }, 64 << 20},
		{"huge block size", func(b []byte) { binary.LittleEndian.PutUint32(b[0x18:], 40) }, 64 << 20},
		{"larger than file", func(b []byte) {}, 1 << 20},
		{"zero blocks", func(b []byte) { binary.LittleEndian.PutUint32(b[0x4:], 0) }, 64 << 20},
		{"free above total", func(b []byte) { binary.LittleEndian.PutUint32(b[0xC:], 1<<30) }, 64 << 20},
		{"free inodes above total", func(b []byte) { binary.LittleEndian.PutUint32(b[0x10:], 1<<30) }, 64 << 20},
		{"64bit high count", func(b []byte) {
			binary.LittleEndian.PutUint32(b[0x60:], incompat64bit)
			binary.LittleEndian.PutUint32(b[0x150:], 0xffffffff)
		}, 64 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := validSuperblock()
			tc.mutate(b)
			if _, err := parseSuperblock(b, tc.size); !errors.Is(err, ErrNotImage) {
				t.Fatalf("err = %v, want ErrNotImage", err)
			}
		})
	}
}

func TestCStringSanitises(t *testing.T) {
	if got := cString([]byte("a\x1b[31mb\x00junk")); got != "a?[31mb" {
		t.Fatalf("got %q", got)
	}
}

// FuzzParseSuperblock: a superblock read from an image is untrusted; the
// parser must never panic, and what it accepts must fit the file.
func FuzzParseSuperblock(f *testing.F) {
	f.Add(validSuperblock(), int64(64<<20))
	seeds, _ := filepath.Glob("testdata/superblock-*")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, int64(1<<30))
	}
	f.Fuzz(func(t *testing.T, b []byte, fileSize int64) {
		sb, err := parseSuperblock(b, fileSize)
		if err != nil {
			return
		}
		if sb.BlockSize < 1024 || sb.BlockSize > 64<<10 || sb.Blocks <= 0 || sb.Size() > fileSize ||
			sb.FreeBlocks > sb.Blocks || sb.FreeInodes > sb.Inodes {
			t.Fatalf("accepted an impossible superblock: %+v for a %d-byte file", sb, fileSize)
		}
	})
}

// FuzzDecodeFiemap: the decoder must stay inside the buffer whatever count
// the header claims.
func FuzzDecodeFiemap(f *testing.F) {
	buf := make([]byte, fiemapHeaderSize+2*fiemapExtentSize)
	binary.LittleEndian.PutUint32(buf[20:], 2)
	binary.LittleEndian.PutUint64(buf[fiemapHeaderSize+16:], 4096)
	binary.LittleEndian.PutUint32(buf[fiemapHeaderSize+fiemapExtentSize+40:], fiemapExtentLast)
	f.Add(buf)
	f.Fuzz(func(t *testing.T, b []byte) {
		exts, _, _, err := decodeFiemap(b)
		if err != nil {
			return
		}
		for _, e := range exts {
			if e.Length < 0 || e.Physical < 0 || e.Logical < 0 {
				t.Fatalf("negative extent %+v", e)
			}
		}
	})
}

// TestParsePartitionLoops reads the loop devices out of /proc/partitions'
// text: whole devices only, whatever else the host has.
func TestParsePartitionLoops(t *testing.T) {
	const header = "major minor  #blocks  name\n\n"
	for _, tc := range []struct {
		name, text string
		want       []string
	}{
		{"none", header + " 254        0  268435456 vda\n", nil},
		{"loops among disks", header + " 254        0  268435456 vda\n   7        0      16384 loop0\n   7       12   33554432 loop12\n 259        0    1048576 nvme0n1\n", []string{"loop0", "loop12"}},
		{"partitions of a loop", header + "   7        3      16384 loop3\n 259        1       8192 loop3p1\n", []string{"loop3"}},
		{"not a loop device", header + "   7        0      16384 loopy\n   7        0      16384 loop\n", nil},
		{"empty and torn lines", "\n   7  0\n   7        5      16384 loop5", []string{"loop5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parsePartitionLoops(tc.text); !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
