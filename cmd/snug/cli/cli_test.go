package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/internal/roottest"
)

func run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = New(&out, &errb).Run(context.Background(), args)
	return out.String(), errb.String(), code
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{}, {"bogus"}, {"image"}, {"image", "bogus"}, {"image", "create"},
		{"image", "create", "--size", "ten", "x"}, {"image", "grow", "x"}, {"config"},
	} {
		if _, stderr, code := run(t, args...); code != exitUsage || stderr == "" {
			t.Errorf("snug %v: exit %d, stderr %q; want a usage error", args, code, stderr)
		}
	}
}

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(good, []byte("[window]\nheadroom = \"1GiB\"\n"), 0o600)
	os.WriteFile(bad, []byte("[window]\n\nheadrom = \"1GiB\"\n"), 0o600)
	if out, _, code := run(t, "config", "check", good); code != exitOK || !strings.Contains(out, "ok") {
		t.Fatalf("good policy: %d %q", code, out)
	}
	_, stderr, code := run(t, "config", "check", bad)
	if code != exitFail || !strings.Contains(stderr, "line 3") || !strings.Contains(stderr, "window.headrom") {
		t.Fatalf("bad policy: exit %d, %q", code, stderr)
	}
	// A bad policy stops commands that use it, before they touch anything.
	if _, stderr, code := run(t, "--config", bad, "image", "create", filepath.Join(dir, "img")); code != exitFail || !strings.Contains(stderr, "line 3") {
		t.Fatalf("create with a bad policy: %d %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "img")); err == nil {
		t.Fatal("create ran despite a bad policy")
	}
}

// TestConfigAfterTheCommand: --config goes before the command or after
// it, as containerd's and other snapshotter daemons' flags do; a bad policy
// named either way stops the command with its line.
func TestConfigAfterTheCommand(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[window]\n\nheadrom = \"1GiB\"\n"), 0o600)
	for _, args := range [][]string{
		{"serve", "--config", bad},
		{"serve", "--log-level", "debug", "--config=" + bad},
		{"status", "--config", bad, "--json"},
		{"image", "create", "--size", "1GiB", filepath.Join(dir, "img"), "--config", bad},
		{"incidents", "--config", bad},
		{"hook", "--config", bad, "prestart"},
	} {
		var out, errb bytes.Buffer
		code := New(&out, &errb).WithStdin(strings.NewReader("not json")).Run(context.Background(), args)
		stderr := errb.String()
		if strings.Contains(stderr, "flag provided but not defined") || !strings.Contains(stderr, "line 3") && args[0] != "hook" {
			t.Errorf("snug %v: exit %d, %q", args, code, stderr)
		}
		if args[0] == "hook" && (code == exitOK || strings.Contains(stderr, "flag provided")) {
			t.Errorf("snug %v with garbage on stdin: exit %d, %q", args, code, stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "img")); err == nil {
		t.Fatal("create ran despite a bad policy")
	}
	if out, _, code := run(t, "version", "--config", bad); code != exitOK || !strings.Contains(out, "snug") {
		t.Errorf("version --config: exit %d, %q", code, out)
	}
}

func TestImageLifecycle(t *testing.T) {
	roottest.Require(t, "mkfs.ext4", "e2fsck", "resize2fs")
	dir := roottest.TempDir(t)
	img := filepath.Join(dir, "c.img")
	cfg := filepath.Join(dir, "none.toml")
	os.WriteFile(cfg, nil, 0o600)
	must := func(args ...string) string {
		t.Helper()
		out, stderr, code := run(t, append([]string{"--config", cfg}, args...)...)
		if code != exitOK {
			t.Fatalf("snug %v: exit %d\n%s%s", args, code, out, stderr)
		}
		return out
	}
	must("image", "create", "--size", "10GiB", img)
	var st map[string]any
	if err := json.Unmarshal([]byte(must("image", "inspect", img, "--json")), &st); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"quota_bytes", "window_bytes", "used_bytes", "footprint_bytes", "swell", "errors"} {
		if _, ok := st[k]; !ok {
			t.Errorf("inspect --json lacks %q", k)
		}
	}
	if st["quota_bytes"].(float64) != 10<<30 || st["footprint_bytes"].(float64) > 8<<20 {
		t.Fatalf("inspect: %v", st)
	}
	if out := must("image", "inspect", img); !strings.Contains(out, "10GiB") || !strings.Contains(out, "FOOTPRINT") {
		t.Fatalf("table: %s", out)
	}
	must("image", "grow", "--window", "1GiB", img)
	must("image", "reclaim", "--headroom", "64MiB", img)
	must("image", "shrink", "--size", "1GiB", img)
	if out := must("image", "check", img); !strings.Contains(out, "clean") {
		t.Fatalf("check: %s", out)
	}
	must("image", "repair", "--mode", "preen", img)
	if _, _, code := run(t, "--config", cfg, "image", "create", "--size", "10GiB", img); code != exitFail {
		t.Fatal("create over an existing image succeeded")
	}
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("not an image"), 0o600)
	if _, stderr, code := run(t, "image", "inspect", junk); code != exitFail || !strings.Contains(stderr, "not an ext4 image") {
		t.Fatalf("inspect junk: %d %q", code, stderr)
	}
}

// TestHookExitCodes: garbage on stdin exits 2 with a message; a daemon that
// is down exits 0 with a warning, so the container is not held up.
func TestHookExitCodes(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(cfg, []byte(`control_address = "`+filepath.Join(t.TempDir(), "none.sock")+`"`+"\n"), 0o600)
	for _, tc := range []struct {
		stage, stdin string
		code         int
		says         string
	}{
		{"prestart", "garbage", exitUsage, "bad OCI state"},
		{"poststop", "", exitUsage, "bad OCI state"},
		{"poststart", `{"id":"x","bundle":"/b"}`, exitUsage, "unknown hook stage"},
		{"prestart", `{"id":"x","bundle":"/b"}`, exitOK, "not running"},
		{"poststop", `{"id":"x","bundle":"/b"}`, exitOK, "not running"},
	} {
		var out, errb bytes.Buffer
		code := New(&out, &errb).WithStdin(strings.NewReader(tc.stdin)).Run(context.Background(), []string{"--config", cfg, "hook", tc.stage})
		if code != tc.code || !strings.Contains(errb.String(), tc.says) {
			t.Errorf("hook %s <%q: exit %d, stderr %q; want %d saying %q", tc.stage, tc.stdin, code, errb.String(), tc.code, tc.says)
		}
	}
}

// TestImageHealth: the HEALTH column of snug status, table-driven.
func TestImageHealth(t *testing.T) {
	dropped := api.ImageStatus{Stats: api.Stats{Health: "ok"}}
	dropped.FlushesDropped = 2
	for _, tc := range []struct {
		name string
		im   api.ImageStatus
		want string
	}{
		{"ok", api.ImageStatus{Stats: api.Stats{Health: "ok"}}, "ok"},
		{"errors", api.ImageStatus{Stats: api.Stats{Health: "errors", Errors: 3}}, "errors (3)"},
		{"not measured", api.ImageStatus{Problem: "not mounted"}, "not mounted"},
		{"damaged layer", api.ImageStatus{Stats: api.Stats{Health: "ok"}, Damaged: "bad extent"}, "damaged layer: bad extent"},
		{"flushes dropped", dropped, "ok, flushes dropped (2)"},
	} {
		if got := imageHealth(tc.im); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
