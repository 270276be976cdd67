package snapshotter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

func TestParseMaxSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1073741824", 1 << 30, true},
		{" 67108864 ", 64 << 20, true},
		{"33554432", imagefs.MinQuota, true},
		{"33554431", 0, false},
		{"17592186044416", MaxQuota, true},
		{"17592186044417", 0, false},
		{"1GiB", 0, false},
		{"-1", 0, false},
		{"", 0, false},
		{"99999999999999999999999", 0, false},
	} {
		got, err := parseMaxSize(tc.in)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("parseMaxSize(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && (!errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), LabelMaxSize)) {
			t.Errorf("parseMaxSize(%q): error %v is not an invalid argument naming the label", tc.in, err)
		}
	}
}

// TestCreateOptionsFromLabel: the label sets the quota; a journal too big
// for a small quota falls back to the minimum.
func TestCreateOptionsFromLabel(t *testing.T) {
	cfg := config.Default()
	cfg.Image.JournalSize = 64 * config.MiB
	p := policyFrom(cfg)
	o, err := p.createOptions(map[string]string{LabelMaxSize: strconv.Itoa(128 << 20)})
	if err != nil {
		t.Fatal(err)
	}
	if o.Quota != 128<<20 || o.JournalSize != imagefs.MinJournal {
		t.Errorf("quota %d journal %d", o.Quota, o.JournalSize)
	}
	o, err = p.createOptions(nil)
	if err != nil || o.Quota != int64(cfg.Image.Quota) || o.JournalSize != 64<<20 {
		t.Errorf("without label: %+v %v", o, err)
	}
}

// FuzzParseMaxSize: labels come from whoever runs containers; any string
// gives a quota within bounds or an invalid-argument error, never a panic.
func FuzzParseMaxSize(f *testing.F) {
	for _, s := range []string{"1073741824", "33554432", "-5", "1e9", "0x10000000", " 4096 ", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseMaxSize(s)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("%q: %v", s, err)
			}
			return
		}
		if n < imagefs.MinQuota || n > MaxQuota {
			t.Fatalf("%q gave %d, out of bounds", s, n)
		}
	})
}

// TestInodesFromLabelAndPolicy: the label sets the inode count, over the
// policy's image.inodes; a count ext4 cannot have is refused, naming the
// label.
func TestInodesFromLabelAndPolicy(t *testing.T) {
	cfg := config.Default()
	cfg.Image.Inodes = 50000
	p := policyFrom(cfg)
	if o, err := p.createOptions(nil); err != nil || o.Inodes != 50000 {
		t.Errorf("policy image.inodes = 50000: %d, %v", o.Inodes, err)
	}
	if o, err := p.createOptions(map[string]string{LabelInodes: "20000"}); err != nil || o.Inodes != 20000 {
		t.Errorf("label 20000: %d, %v", o.Inodes, err)
	}
	for _, bad := range []string{"", "10", "lots", "-5", "4294967296", "1e6"} {
		_, err := p.createOptions(map[string]string{LabelInodes: bad})
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), LabelInodes) {
			t.Errorf("label %q: %v, want an invalid argument naming the label", bad, err)
		}
	}
}

// FuzzParseInodes: any label value gives a count ext4 can have or an
// invalid argument.
func FuzzParseInodes(f *testing.F) {
	for _, s := range []string{"20000", "1024", "4294967295", "-1", " 5000 ", "0x100000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseInodes(LabelInodes, s)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("%q: %v", s, err)
			}
			return
		}
		if n < imagefs.MinInodes || n > imagefs.MaxInodes {
			t.Fatalf("%q gave %d", s, n)
		}
	})
}

// TestInodeLimitHolds: a snapshot made with the inode label holds that
// many inodes (ext4 rounds up to whole inode-table blocks per group, 4096
// at the default 32 GiB ceiling), and a writer making files beyond it gets
// ENOSPC while bytes remain.
func TestInodeLimitHolds(t *testing.T) {
	ctx := context.Background()
	sn, _ := newTestSnapshotter(t)
	mounts, err := sn.Prepare(ctx, "few-inodes", "", snapshots.WithLabels(map[string]string{LabelInodes: "5000"}))
	if err != nil {
		t.Fatal(err)
	}
	rootfs := mountRootfs(t, mounts)
	st := statusOf(t, sn, "few-inodes")
	if st.InodesTotal < 5000 || st.InodesTotal > 5000+4096 {
		t.Fatalf("asked 5000 inodes, the image has %d", st.InodesTotal)
	}
	var made int64
	for ; made < st.InodesTotal+10; made++ {
		f, err := os.Create(filepath.Join(rootfs, strconv.FormatInt(made, 10)))
		if err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
		f.Close()
	}
	st = statusOf(t, sn, "few-inodes")
	t.Logf("made %d files of %d inodes, %d MiB still free", made, st.InodesTotal, st.FreeBytes>>20)
	if made > st.InodesTotal || made < st.InodesTotal-64 || st.FreeBytes < 8<<20 {
		t.Fatalf("made %d files with %d inodes, %d MiB free", made, st.InodesTotal, st.FreeBytes>>20)
	}
}
