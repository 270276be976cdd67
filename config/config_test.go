package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseOverridesDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`
root = "/srv/snug"

[image]
quota = "20GiB"
journal_size = 8388608
direct_io = false
async_commit = true

[window]
headroom = "1GiB"
check_interval = "50ms"

[pool]
min = 0
max = 8
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Root = "/srv/snug"
	want.Image.Quota = 20 * GiB
	want.Image.JournalSize = 8 * MiB
	want.Image.DirectIO = false
	want.Image.AsyncCommit = true
	want.Window.Headroom = GiB
	want.Window.CheckInterval = 50 * time.Millisecond
	want.Pool = PoolPolicy{Min: 0, Max: 8, Premount: true}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got %+v\nwant %+v", cfg, want)
	}
}

// TestClassesInheritWhatTheyLeaveOut: a [policies.NAME] class starts from
// the file's [window] and [reclaim], whatever order the tables come in.
func TestClassesInheritWhatTheyLeaveOut(t *testing.T) {
	cfg, err := Parse([]byte(`
[policies.db.window]
headroom = "1GiB"
[policies.db.reclaim]
on_stop = false

[window]
headroom_ratio = 0.25
[reclaim]
min_gain = "64MiB"

[policies.batch]
reclaim.idle_after = "0s"
image.direct_io = false
image.async_commit = true
image.discard = true
`))
	if err != nil {
		t.Fatal(err)
	}
	base := cfg.Base()
	if base.Window.HeadroomRatio != 0.25 || base.Reclaim.MinGain != 64*MiB || !base.Image.DirectIO {
		t.Fatalf("base %+v", base)
	}
	db, ok := cfg.Class("db")
	want := base
	want.Window.Headroom = GiB
	want.Reclaim.OnStop = false
	if !ok || db != want {
		t.Fatalf("class db = %+v, %v\nwant %+v", db, ok, want)
	}
	batch, ok := cfg.Class("batch")
	want = base
	want.Reclaim.IdleAfter = 0
	want.Image.DirectIO = false
	want.Image.AsyncCommit = true
	want.Image.Discard = true
	if !ok || batch != want {
		t.Fatalf("class batch = %+v, %v\nwant %+v", batch, ok, want)
	}
	if got, ok := cfg.Class("nope"); ok || got != base {
		t.Fatalf("unknown class = %+v, %v; want the base, false", got, ok)
	}
}

func TestParseEmptyIsDefault(t *testing.T) {
	cfg, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, Default()) {
		t.Fatalf("empty document gave %+v", cfg)
	}
}

func TestParseErrorsNameKeyAndLine(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"unknown top key", "root = \"/x\"\nroots = \"/y\"\n", []string{"line 2", `unknown key "roots"`}},
		{"unknown table key", "[window]\nheadroom = \"1GiB\"\nhedroom = 3\n", []string{"line 3", `"window.hedroom"`}},
		{"unknown table", "\n[windows]\n", []string{"line 2", `"windows"`}},
		{"bad size", "[image]\n\nquota = \"lots\"\n", []string{"line 3", "image.quota", "invalid size"}},
		{"negative size", "[image]\nquota = -5\n", []string{"line 2", "image.quota"}},
		{"wrong type", "[window]\nheadroom_ratio = \"much\"\n", []string{"line 2", "window.headroom_ratio"}},
		{"syntax", "root = \n", []string{"line 1"}},
		{"quota too small", "[image]\nquota = \"1MiB\"\n", []string{"line 2", "image.quota", "below the minimum 32MiB"}},
		{"relative root", "root = \"var/lib\"\n", []string{"line 1", "root", "absolute"}},
		{"bad repair", "[fsck]\nrepair = \"maybe\"\n", []string{"line 2", "fsck.repair"}},
		{"bad interval", "[window]\ncheck_interval = \"0s\"\n", []string{"line 2", "window.check_interval"}},
		{"dotted key", "window.headroom = \"x\"\n", []string{"line 1", "window.headroom"}},
		{"unknown class key", "[policies.db.window]\nheadroom = \"1GiB\"\nhedroom = 1\n", []string{"line 3", "policies.db.window.hedroom"}},
		{"class image key", "[policies.db.image]\ndirect_io = false\nquota = \"1GiB\"\n", []string{"line 3", `"policies.db.image.quota"`, "only direct_io, async_commit and discard"}},
		{"class async_commit type", "[policies.db.image]\nasync_commit = 1\n", []string{"line 2", "policies.db.image.async_commit"}},
		{"class direct_io type", "[policies.db.image]\ndirect_io = \"no\"\n", []string{"line 2", "policies.db.image.direct_io"}},
		{"pool max below min", "[pool]\nmin = 8\nmax = 4\n", []string{"line 3", "pool.max", "outside pool.min (8)"}},
		{"negative pool min", "[pool]\nmin = -1\n", []string{"line 2", "pool.min"}},
		{"pool too big", "[pool]\n\nmax = 100000\n", []string{"line 3", "pool.max"}},
		{"bad class size", "[policies.db.reclaim]\n\nmin_gain = \"some\"\n", []string{"line 3", "policies.db.reclaim.min_gain", "invalid size"}},
		{"class out of range", "[policies.db.window]\nheadroom_ratio = 11.0\n", []string{"line 2", "policies.db.window.headroom_ratio"}},
		{"class interval", "[policies.db.window]\ncheck_interval = \"1s\"\n", []string{"line 2", "policies.db.window.check_interval", "global"}},
		{"class name", "[policies.\"d b\".window]\nheadroom = 1\n", []string{"policies.d b", "class name"}},
		{"idle too short", "[reclaim]\nidle_after = \"10ms\"\n", []string{"line 2", "reclaim.idle_after"}},
		{"metrics address", "metrics_address = \"9477\"\n", []string{"line 1", "metrics_address", "host:port"}},
		{"containerd address", "containerd_address = \"run/c.sock\"\n", []string{"line 1", "containerd_address"}},
		{"fsck action", "[fsck]\n\naction = \"fix\"\n", []string{"line 3", "fsck.action", "notify"}},
		{"fsck monitor", "[fsck]\nmonitor = \"inotify\"\n", []string{"line 2", "fsck.monitor"}},
		{"fsck check method", "[fsck]\ncheck_method = \"copy\"\n", []string{"line 2", "fsck.check_method"}},
		{"fsck max repairs", "[fsck]\nmax_repairs = -1\n", []string{"line 2", "fsck.max_repairs"}},
		{"fsck scrub too often", "[fsck]\nscrub_interval = \"5s\"\n", []string{"line 2", "fsck.scrub_interval"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "missing.toml")); err == nil {
		t.Fatal("a missing file named explicitly must be an error")
	}
	p := filepath.Join(dir, "c.toml")
	if err := os.WriteFile(p, []byte("[window]\nheadroom = 'x'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("err = %v, want the path and line", err)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
		ok   bool
	}{
		{"0", 0, true}, {"4096", 4096, true}, {"10GiB", 10 * GiB, true}, {"10G", 10 * GiB, true},
		{"10 GiB", 10 * GiB, true}, {"1.5MiB", 1536 * KiB, true}, {"2KB", 2000, true},
		{"512mib", 512 * MiB, true}, {"1EiB", 0, false}, {"", 0, false}, {"GiB", 0, false},
		{"-1", 0, false}, {"1.2.3G", 0, false}, {"99999999999999999999", 0, false},
		{"1024PiB", 0, false}, {"1023PiB", 1023 * PiB, true}, {"5 bananas", 0, false},
	} {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// FuzzParse feeds arbitrary documents to the policy parser: it must never
// panic, and whatever it accepts must be a valid policy.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.toml")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		cfg, err := Parse(doc)
		if err != nil {
			return
		}
		if verr := cfg.validate(); verr != nil {
			t.Fatalf("accepted an invalid policy: %v", verr)
		}
	})
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"10GiB", "1.5M", "0", "4096", "1e3G", "  7 tib "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		if err == nil && (v < 0 || v >= maxSize) {
			t.Fatalf("ParseSize(%q) = %d out of range", s, v)
		}
	})
}

// FuzzValidClassName: a class name comes from a pod's annotation. What
// ValidClassName accepts is short printable ASCII with no path separator,
// NUL or space, so it can go into a file's content, a log line or a metric
// label as it is.
func FuzzValidClassName(f *testing.F) {
	for _, s := range []string{"batch", "a.b_c-9", "", "..", "../x", "a/b", "x\x00", strings.Repeat("a", 64), "ü", "a b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !ValidClassName(s) {
			return
		}
		if len(s) == 0 || len(s) > 63 {
			t.Fatalf("%q accepted, length %d", s, len(s))
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; c <= ' ' || c >= 0x7f || c == '/' || c == '\\' {
				t.Fatalf("%q accepted, with byte %#x", s, c)
			}
		}
	})
}
