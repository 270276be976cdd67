package hooks

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/snugfs/snug/control/wire"
)

func TestReadState(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"runc state", `{"ociVersion":"1.0.2","id":"web","status":"created","pid":42,"bundle":"/run/b/web","annotations":{"a":"b"}}`, true},
		{"empty", ``, false},
		{"garbage", `hello`, false},
		{"array", `[]`, false},
		{"no id", `{"bundle":"/b"}`, false},
		{"relative bundle", `{"id":"x","bundle":"b"}`, false},
		{"wrong type", `{"id":5,"bundle":"/b"}`, false},
		{"huge", `{"id":"x","bundle":"/b","annotations":{"a":"` + strings.Repeat("x", maxState) + `"}}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := ReadState(strings.NewReader(tc.in))
			if tc.ok != (err == nil) {
				t.Fatalf("ReadState: %+v, %v", st, err)
			}
			if err != nil && !errors.Is(err, ErrBadState) {
				t.Fatalf("error %v is not ErrBadState", err)
			}
		})
	}
}

func FuzzReadState(f *testing.F) {
	f.Add([]byte(`{"ociVersion":"1.0.2","id":"web","status":"created","bundle":"/run/b"}`))
	f.Add([]byte(`{"id":"","bundle":""}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, in []byte) {
		st, err := ReadState(strings.NewReader(string(in)))
		if err == nil && (st.ID == "" || !filepath.IsAbs(st.Bundle)) {
			t.Fatalf("accepted %+v", st)
		}
		if err != nil && !errors.Is(err, ErrBadState) {
			t.Fatalf("error %v is not ErrBadState", err)
		}
	})
}

func TestParseRuncArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want RuncCall
	}{
		{[]string{"--root", "/run/containerd/runc/default", "--log", "/x/log.json", "--log-format", "json", "create", "--bundle", "/b/c1", "--pid-file", "/b/c1/init.pid", "c1"}, RuncCall{"create", "/b/c1", "c1"}},
		{[]string{"create", "-b", "/b/c2", "--console-socket", "/s", "--no-pivot", "c2"}, RuncCall{"create", "/b/c2", "c2"}},
		{[]string{"--systemd-cgroup", "run", "--bundle=/b/c3", "-d", "c3", "--pid-file", "x"}, RuncCall{"run", "/b/c3", "c3"}},
		{[]string{"create", "c4"}, RuncCall{"create", ".", "c4"}},
		{[]string{"run", "-b", "", "c5"}, RuncCall{"run", ".", "c5"}},
		{[]string{"create", "--", "-c6"}, RuncCall{"create", ".", "-c6"}},
		{[]string{"create"}, RuncCall{"create", ".", ""}},
		{[]string{"--root", "/r", "start", "c1"}, RuncCall{Command: "start"}},
		{[]string{"--root", "/r", "delete", "--force", "c1"}, RuncCall{Command: "delete"}},
		{[]string{"--version"}, RuncCall{}},
		{nil, RuncCall{}},
	} {
		if got := ParseRuncArgs(tc.args); got != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.args, got, tc.want)
		}
	}
}

// TestAddHooksKeepsTheRestAndIsIdempotent: the wrapper adds its two hooks
// after the ones there, once, and leaves every other field as it was,
// fields this runtime-spec version does not know included.
func TestAddHooksKeepsTheRestAndIsIdempotent(t *testing.T) {
	bundle := t.TempDir()
	orig := `{"ociVersion":"1.1.0","root":{"path":"rootfs"},"process":{"args":["sh"],"cwd":"/"},
"hooks":{"poststop":[{"path":"/bin/other","args":["other"]}]},"linux":{"futureField":{"x":[1,2]}},"vendor.ext":true}`
	path := filepath.Join(bundle, "config.json")
	if err := os.WriteFile(path, []byte(orig), 0o640); err != nil {
		t.Fatal(err)
	}
	c := Command{Path: "/usr/local/bin/snug", Args: []string{"snug", "--config", "/etc/x.toml", "hook"}}
	for range 2 {
		if err := AddHooks(bundle, StageHook{StageCreateRuntime, c.HookFor(StageCreateRuntime)}, StageHook{StagePoststop, c.HookFor(StagePoststop)}); err != nil {
			t.Fatal(err)
		}
	}
	data, _ := os.ReadFile(path)
	var got, want map[string]any
	json.Unmarshal(data, &got)
	json.Unmarshal([]byte(orig), &want)
	for _, k := range []string{"ociVersion", "root", "process", "linux", "vendor.ext"} {
		if !reflect.DeepEqual(got[k], want[k]) {
			t.Errorf("%s changed: %v -> %v", k, want[k], got[k])
		}
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	if n := len(spec.Hooks.CreateRuntime); n != 1 || spec.Hooks.CreateRuntime[0].Args[4] != StageCreateRuntime {
		t.Errorf("createRuntime hooks: %+v", spec.Hooks.CreateRuntime)
	}
	if n := len(spec.Hooks.Poststop); n != 2 || spec.Hooks.Poststop[0].Path != "/bin/other" || spec.Hooks.Poststop[1].Args[4] != StagePoststop {
		t.Errorf("poststop hooks: %+v", spec.Hooks.Poststop)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := AddHooks(bundle, StageHook{StageCreateRuntime, c.HookFor(StageCreateRuntime)}, StageHook{StagePoststop, c.HookFor(StagePoststop)}); err == nil {
		t.Error("AddHooks accepted a broken config.json")
	}
	if b, _ := os.ReadFile(path); string(b) != "{not json" {
		t.Error("a config.json AddHooks could not read was changed")
	}
}

// TestHookFailsSafe: garbage is an error; a daemon that is down is only a
// warning.
func TestHookFailsSafe(t *testing.T) {
	client := wire.NewClient(filepath.Join(t.TempDir(), "none.sock"))
	ctx := context.Background()
	if _, err := Hook(ctx, StagePrestart, strings.NewReader("garbage"), client); !errors.Is(err, ErrBadState) {
		t.Errorf("garbage: %v, want ErrBadState", err)
	}
	if _, err := Hook(ctx, "poststart", strings.NewReader(`{"id":"x","bundle":"/b"}`), client); !errors.Is(err, ErrUnknownStage) {
		t.Errorf("unknown stage: %v", err)
	}
	res, err := Hook(ctx, StagePoststop, strings.NewReader(`{"id":"x","bundle":"/b"}`), client)
	if err != nil || !errors.Is(res.Warning, wire.ErrDaemonDown) {
		t.Errorf("daemon down: %+v, %v; want a warning", res, err)
	}
}

func TestRootfsOf(t *testing.T) {
	bundle := t.TempDir()
	st := specs.State{ID: "x", Bundle: bundle}
	if r, _ := rootfsOf(st); r != filepath.Join(bundle, "rootfs") {
		t.Errorf("no config.json: %s", r)
	}
	os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"root":{"path":"/abs/root"},"annotations":{"io.snugfs.policy":"db"}}`), 0o600)
	r, ann := rootfsOf(st)
	if r != "/abs/root" || ann["io.snugfs.policy"] != "db" {
		t.Errorf("absolute root: %s %v", r, ann)
	}
	os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"root":{"path":"rfs"}}`), 0o600)
	if r, _ := rootfsOf(st); r != filepath.Join(bundle, "rfs") {
		t.Errorf("relative root: %s", r)
	}
}

// TestAddHooksRefusesAmbiguousKeys: runc reads keys in any case, so a
// "Hooks" or "PostStop" beside snug's exact key would hide one of them.
// AddHooks refuses such a file and leaves it as it was.
func TestAddHooksRefusesAmbiguousKeys(t *testing.T) {
	c := Command{Path: "/usr/local/bin/snug", Args: []string{"snug", "hook"}}
	for _, doc := range []string{
		`{"Hooks":{"poststop":[{"path":"/bin/x"}]}}`,
		`{"hooks":{"PostStop":[{"path":"/bin/x"}]}}`,
		`{"hooks":{"createruntime":[]}}`,
	} {
		bundle := t.TempDir()
		path := filepath.Join(bundle, "config.json")
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := AddHooks(bundle, StageHook{StageCreateRuntime, c.HookFor(StageCreateRuntime)}, StageHook{StagePoststop, c.HookFor(StagePoststop)}); err == nil {
			t.Errorf("%s: accepted", doc)
		}
		if b, _ := os.ReadFile(path); string(b) != doc {
			t.Errorf("%s: changed to %s", doc, b)
		}
	}
}

// TestDetachedHookDoesNotHoldTheRuntime runs a detached hook as runc does
// (stdin the state, stdout and stderr captured, waited for): the runtime
// gets it back while the command still runs, and the command reads the
// whole state.
func TestDetachedHookDoesNotHoldTheRuntime(t *testing.T) {
	dir := t.TempDir()
	got, release := filepath.Join(dir, "got"), filepath.Join(dir, "release")
	script := filepath.Join(dir, "hook")
	// The hook waits until the test releases it, then saves its stdin.
	body := "#!/bin/sh\nwhile [ ! -e " + release + " ]; do sleep 0.05; done\ncat > " + got + ".tmp; mv " + got + ".tmp " + got + "\necho noise; echo noise >&2\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	h := Command{Path: script, Args: []string{"hook"}}.Detached(StagePoststop)
	state := `{"ociVersion":"1.2.0","id":"c1","status":"stopped","bundle":"/b"}`
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.Path, h.Args[1:]...)
	cmd.Args[0], cmd.WaitDelay = h.Args[0], time.Second
	defer os.WriteFile(release, nil, 0o600) // let the command end, whatever happens
	var stdout, stderr strings.Builder
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(state), &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("detached hook: %v: %s", err, stderr.String())
	}
	if _, err := os.Stat(got); err == nil {
		t.Fatal("the runtime waited for the hook's command")
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile(got)
		if err == nil {
			if string(b) != state {
				t.Fatalf("the command read %q, want %q", b, state)
			}
			break
		}
		if time.Now().After(end) {
			t.Fatal("the command never ran")
		}
	}
	if stdout.Len() != 0 || stderr.Len() != 0 {
		t.Errorf("the runtime got output %q %q", stdout.String(), stderr.String())
	}
}
