package config

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"

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
		{"17592186044416", imagefs.MaxSize, true},
		{"17592186044417", 0, false},
		{"1GiB", 0, false},
		{"-1", 0, false},
		{"", 0, false},
		{"99999999999999999999999", 0, false},
	} {
		got, err := ParseMaxSize(tc.in)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("ParseMaxSize(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && (!errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), LabelMaxSize)) {
			t.Errorf("ParseMaxSize(%q): error %v is not an invalid argument naming the label", tc.in, err)
		}
	}
}

// FuzzParseMaxSize: labels come from whoever runs containers; any string
// gives a quota within bounds or an invalid-argument error, never a panic.
func FuzzParseMaxSize(f *testing.F) {
	for _, s := range []string{"1073741824", "33554432", "-5", "1e9", "0x10000000", " 4096 ", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseMaxSize(s)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("%q: %v", s, err)
			}
			return
		}
		if n < imagefs.MinQuota || n > imagefs.MaxSize {
			t.Fatalf("%q gave %d, out of bounds", s, n)
		}
	})
}

// FuzzParseInodes: any label value gives a count ext4 can have or an
// invalid argument.
func FuzzParseInodes(f *testing.F) {
	for _, s := range []string{"20000", "1024", "4294967295", "-1", " 5000 ", "0x100000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseInodes(LabelInodes, s)
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

func TestAnnotatedQuota(t *testing.T) {
	for _, tc := range []struct {
		annotations map[string]string
		quota       int64
		ok, bad     bool
	}{
		{annotations: nil},
		{annotations: map[string]string{"io.snugfs.policy": "big"}},
		{annotations: map[string]string{AnnotationQuota: "512MiB"}, quota: 512 << 20, ok: true},
		{annotations: map[string]string{AnnotationQuota: "1G"}, quota: 1 << 30, ok: true},
		{annotations: map[string]string{AnnotationMaxSize: "268435456"}, quota: 256 << 20, ok: true},
		// snug's own wins over containerd's name.
		{annotations: map[string]string{AnnotationMaxSize: "268435456", AnnotationQuota: "1GiB"}, quota: 1 << 30, ok: true},
		{annotations: map[string]string{AnnotationQuota: "lots"}, ok: true, bad: true},
		{annotations: map[string]string{AnnotationQuota: "1MiB"}, ok: true, bad: true},
		{annotations: map[string]string{AnnotationQuota: "17TiB"}, ok: true, bad: true},
		{annotations: map[string]string{AnnotationMaxSize: "512MiB"}, ok: true, bad: true}, // bytes only, as the label
		{annotations: map[string]string{AnnotationMaxSize: "-1"}, ok: true, bad: true},
	} {
		q, _, ok, err := AnnotatedQuota(tc.annotations)
		if ok != tc.ok || (err != nil) != tc.bad || (!tc.bad && q != tc.quota) {
			t.Errorf("%v: quota %d ok %t err %v; want %d %t bad %t", tc.annotations, q, ok, err, tc.quota, tc.ok, tc.bad)
		}
		if tc.bad && !errdefs.IsInvalidArgument(err) {
			t.Errorf("%v: %v is not an invalid argument", tc.annotations, err)
		}
	}
}

// FuzzAnnotatedQuota: whatever a pod spec carries, the parser answers a
// quota in range or an invalid argument, and never panics.
func FuzzAnnotatedQuota(f *testing.F) {
	for _, s := range []string{"512MiB", "1.5G", "268435456", "", "0x10", "1e9", "9999999999999999999999"} {
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, quota, maxSize string) {
		for _, ann := range []map[string]string{{AnnotationQuota: quota}, {AnnotationMaxSize: maxSize}} {
			q, _, ok, err := AnnotatedQuota(ann)
			if !ok {
				t.Fatalf("%v: not seen", ann)
			}
			if err != nil && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("%v: %v", ann, err)
			}
			if err == nil && (q < imagefs.MinQuota || q > imagefs.MaxSize) {
				t.Fatalf("%v: quota %d out of range", ann, q)
			}
		}
	})
}
