package snapshotter

import (
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

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
