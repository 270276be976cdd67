package hooks

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// FuzzParseRuncArgs: the wrapper reads runc's argv, which containerd or a
// user builds. Whatever it is, the command is one of the arguments (or
// none), a bundle is found only for create and run, and the bundle is one
// of the arguments or the working directory: nothing is made up.
func FuzzParseRuncArgs(f *testing.F) {
	for _, args := range [][]string{
		{"--root", "/run/containerd/runc/default", "--log", "/x/log.json", "create", "--bundle", "/b/c1", "c1"},
		{"create", "-b=/b", "c"},
		{"run", "--bundle=/b", "--", "-b", "/x"},
		{"--root"},
		{"create", "--bundle"},
		{"start", "c1"},
	} {
		f.Add(strings.Join(args, "\x00"))
	}
	f.Fuzz(func(t *testing.T, joined string) {
		args := strings.Split(joined, "\x00")
		call := ParseRuncArgs(args)
		if call.Command != "" && (!slices.Contains(args, call.Command) || strings.HasPrefix(call.Command, "-")) {
			t.Fatalf("%q: command %q is not one of the arguments", args, call.Command)
		}
		wantBundle := call.Command == "create" || call.Command == "run"
		if wantBundle != (call.Bundle != "") || (!wantBundle && call.Container != "") {
			t.Fatalf("%q: %+v", args, call)
		}
		if call.Container != "" && !slices.Contains(args, call.Container) {
			t.Fatalf("%q: container %q is not one of the arguments", args, call.Container)
		}
		if call.Bundle == "" || call.Bundle == "." || slices.Contains(args, call.Bundle) {
			return
		}
		if !slices.ContainsFunc(args, func(a string) bool {
			return a == "--bundle="+call.Bundle || a == "-b="+call.Bundle
		}) {
			t.Fatalf("%q: bundle %q is not one of the arguments", args, call.Bundle)
		}
	})
}

// FuzzBundleConfig: a bundle's config.json is written by whoever built the
// container. AddHooks must either refuse it and leave it byte for byte, or
// add exactly snug's two hooks, with the command snug chose (never one the
// file names), keep every other field, keep the mode, and do it once. The
// hook's own reading of the same file (rootfsOf) must not fail on it.
func FuzzBundleConfig(f *testing.F) {
	for _, s := range []string{
		`{"ociVersion":"1.1.0","root":{"path":"rootfs"},"process":{"args":["sh"]}}`,
		`{"hooks":{"poststop":[{"path":"/bin/other","args":["other"]}]},"x":[1,2]}`,
		`{"hooks":null}`,
		`{"hooks":{"createRuntime":"no"}}`,
		`{"root":{"path":"../../etc"},"annotations":{"io.snugfs.policy":"../x"}}`,
		`{"a":1,"a":2}`,
		`[]`,
		`{not json`,
		``,
	} {
		f.Add([]byte(s))
	}
	c := Command{Path: "/usr/local/bin/snug", Args: []string{"snug", "hook"}}
	f.Fuzz(func(t *testing.T, data []byte) {
		bundle := t.TempDir()
		path := filepath.Join(bundle, "config.json")
		if err := os.WriteFile(path, data, 0o640); err != nil {
			t.Fatal(err)
		}
		if r, _ := rootfsOf(specs.State{ID: "x", Bundle: bundle}); !filepath.IsAbs(r) {
			t.Fatalf("rootfs %q is not absolute", r)
		}
		err := AddHooks(bundle, StageHook{StageCreateRuntime, c.HookFor(StageCreateRuntime)}, StageHook{StagePoststop, c.Detached(StagePoststop)})
		got, rerr := os.ReadFile(path)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if entries, _ := os.ReadDir(bundle); len(entries) != 1 {
			t.Fatalf("AddHooks left %d files in the bundle", len(entries))
		}
		if err != nil {
			if !bytes.Equal(got, data) {
				t.Fatalf("refused (%v) but changed the file", err)
			}
			return
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
			t.Fatalf("mode %v, want 0640", fi.Mode().Perm())
		}
		requireSameFieldsBut(t, data, got, "hooks")
		// What runc reads: keys in any case, unknown stages ignored.
		var before, after struct {
			Hooks *specs.Hooks `json:"hooks"`
		}
		runcReads := json.Unmarshal(data, &before) == nil
		if err := json.Unmarshal(got, &after); err != nil {
			if runcReads {
				t.Fatalf("runc could read the file before, not after: %v", err)
			}
		} else {
			if before.Hooks == nil {
				before.Hooks = &specs.Hooks{}
			}
			requireHookAdded(t, c.HookFor(StageCreateRuntime), before.Hooks.CreateRuntime, after.Hooks.CreateRuntime)
			requireHookAdded(t, c.Detached(StagePoststop), before.Hooks.Poststop, after.Hooks.Poststop)
		}
		if err := AddHooks(bundle, StageHook{StageCreateRuntime, c.HookFor(StageCreateRuntime)}, StageHook{StagePoststop, c.Detached(StagePoststop)}); err != nil {
			t.Fatalf("second AddHooks: %v", err)
		}
		if again, _ := os.ReadFile(path); !bytes.Equal(again, got) {
			t.Fatalf("second AddHooks changed the file:\n%s\n%s", got, again)
		}
	})
}

// requireHookAdded: after is before with h added at the end, unless h was
// there already.
func requireHookAdded(t *testing.T, h specs.Hook, before, after []specs.Hook) {
	t.Helper()
	same := func(o specs.Hook) bool { return o.Path == h.Path && slices.Equal(o.Args, h.Args) }
	want := before
	if !slices.ContainsFunc(before, same) {
		want = append(slices.Clone(before), h)
	}
	if len(after) != len(want) {
		t.Fatalf("hooks %+v, want %+v", after, want)
	}
	for i := range want {
		if after[i].Path != want[i].Path || !slices.Equal(after[i].Args, want[i].Args) {
			t.Fatalf("hooks %+v, want %+v", after, want)
		}
	}
}

// requireSameFieldsBut: after has the top-level fields of before (the last
// of duplicate keys, as Go reads them), each with the same JSON value,
// except the field skip.
func requireSameFieldsBut(t *testing.T, before, after []byte, skip string) {
	t.Helper()
	var b, a map[string]json.RawMessage
	if err := json.Unmarshal(before, &b); err != nil {
		t.Fatalf("accepted %q: %v", before, err)
	}
	if err := json.Unmarshal(after, &a); err != nil {
		t.Fatal(err)
	}
	for k, v := range b {
		if k == skip {
			continue
		}
		var want, got bytes.Buffer
		json.Compact(&want, v)
		json.Compact(&got, a[k])
		if !bytes.Equal(want.Bytes(), got.Bytes()) {
			t.Fatalf("field %q changed: %s -> %s", k, v, a[k])
		}
	}
	if len(a) != len(b) && !(len(a) == len(b)+1 && b[skip] == nil) {
		t.Fatalf("fields %d -> %d", len(b), len(a))
	}
}
