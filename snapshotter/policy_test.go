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

// TestCreateOptionsFromLabel: the label sets the quota; a journal too big
// for a small quota falls back to the minimum.
func TestCreateOptionsFromLabel(t *testing.T) {
	cfg := config.Default()
	cfg.Image.JournalSize = 64 * config.MiB
	p := policyFrom(cfg)
	o, err := p.createOptions(map[string]string{config.LabelMaxSize: strconv.Itoa(128 << 20)})
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
	if o, err := p.createOptions(map[string]string{config.LabelInodes: "20000"}); err != nil || o.Inodes != 20000 {
		t.Errorf("label 20000: %d, %v", o.Inodes, err)
	}
	for _, bad := range []string{"", "10", "lots", "-5", "4294967296", "1e6"} {
		_, err := p.createOptions(map[string]string{config.LabelInodes: bad})
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), config.LabelInodes) {
			t.Errorf("label %q: %v, want an invalid argument naming the label", bad, err)
		}
	}
}

// TestInodeLimitHolds: a snapshot made with the inode label holds that
// many inodes (ext4 rounds up to whole inode-table blocks per group, 4096
// at the default 32 GiB ceiling), and a writer making files beyond it gets
// ENOSPC while bytes remain.
func TestInodeLimitHolds(t *testing.T) {
	ctx := context.Background()
	sn, _ := newTestSnapshotter(t)
	mounts, err := sn.Prepare(ctx, "few-inodes", "", snapshots.WithLabels(map[string]string{config.LabelInodes: "5000"}))
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
