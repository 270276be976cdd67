package hooks_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/control/wire"
	"github.com/snugfs/snug/hooks"
)

// runcWrapper is snug-runc (cmd/snug-runc, C) built by the script make
// build uses, in a directory with a fake snug-hook and a fake runc that
// print how they were called.
type runcWrapper struct {
	path, hook, runc string
}

var (
	wrapperOnce  sync.Once
	wrapperBuilt runcWrapper
	wrapperErr   error
)

func buildRuncWrapper(t testing.TB) runcWrapper {
	t.Helper()
	wrapperOnce.Do(func() {
		if _, err := exec.LookPath("cc"); err != nil && os.Getenv("SNUG_REQUIRE_ROOT") == "" {
			wrapperErr = errSkip
			return
		}
		dir, err := os.MkdirTemp("", "snug-runc-test-")
		if err != nil {
			wrapperErr = err
			return
		}
		w := runcWrapper{path: filepath.Join(dir, "snug-runc"), hook: filepath.Join(dir, "snug-hook"), runc: filepath.Join(dir, "fake-runc")}
		if out, err := exec.Command("../scripts/build-snug-runc.sh", w.path).CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			wrapperErr = fmt.Errorf("build snug-runc: %v\n%s", err, out)
			return
		}
		for path, script := range map[string]string{
			w.hook: "#!/bin/sh\nprintf 'snug-hook'; for a do printf ' [%s]' \"$a\"; done; echo\n",
			w.runc: "#!/bin/sh\nprintf 'runc'; for a do printf ' [%s]' \"$a\"; done; echo\n",
		} {
			if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
				os.RemoveAll(dir)
				wrapperErr = err
				return
			}
		}
		wrapperBuilt = w
	})
	if errors.Is(wrapperErr, errSkip) {
		t.Skip("no C compiler (cc): snug-runc cannot be built")
	}
	if wrapperErr != nil {
		t.Fatal(wrapperErr)
	}
	return wrapperBuilt
}

var errSkip = errors.New("skip")

// TestMain removes the wrapper the tests built once.
func TestMain(m *testing.M) {
	code := m.Run()
	if wrapperBuilt.path != "" {
		os.RemoveAll(filepath.Dir(wrapperBuilt.path))
	}
	os.Exit(code)
}

// called is how a fake was called: "runc [a] [b]".
func called(name string, args []string) string {
	var b strings.Builder
	b.WriteString(name)
	for _, a := range args {
		fmt.Fprintf(&b, " [%s]", a)
	}
	return b.String() + "\n"
}

// fakeDaemon answers the bundle create call with status and records the
// requests it got.
type fakeDaemon struct {
	socket string
	status int
	mu     sync.Mutex
	got    []wire.Bundle
	states []string // poststop hook bodies
}

func startFakeDaemon(t testing.TB, status int) *fakeDaemon {
	t.Helper()
	d := &fakeDaemon{socket: filepath.Join(t.TempDir(), "control.sock"), status: status}
	l, err := net.Listen("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == wire.PathPoststop {
			body, _ := io.ReadAll(r.Body)
			d.mu.Lock()
			d.states = append(d.states, string(body))
			d.mu.Unlock()
			w.WriteHeader(d.status)
			json.NewEncoder(w).Encode(wire.ErrorBody{Error: "the fake says no"})
			return
		}
		var b wire.Bundle
		if r.Method != http.MethodPost || r.URL.Path != wire.PathBundleCreate || json.NewDecoder(r.Body).Decode(&b) != nil {
			http.Error(w, "bad call", http.StatusTeapot)
			return
		}
		d.mu.Lock()
		d.got = append(d.got, b)
		d.mu.Unlock()
		w.WriteHeader(d.status)
		json.NewEncoder(w).Encode(wire.ErrorBody{Error: "the fake says no"})
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return d
}

func (d *fakeDaemon) take() []wire.Bundle {
	d.mu.Lock()
	defer d.mu.Unlock()
	got := d.got
	d.got = nil
	return got
}

// runWrapper runs snug-runc with args in dir, the daemon at control.
func (w runcWrapper) run(t testing.TB, dir, control string, args []string, env ...string) (stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(w.path, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SNUG_RUNC="+w.runc, "SNUG_CONTROL="+control, "SNUG_CONFIG=")
	cmd.Env = append(cmd.Env, env...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("snug-runc %q: %v\n%s", args, err, errb.String())
	}
	return out.String(), errb.String()
}

// checkWrapperCall runs snug-runc with args against d and checks it agrees
// with hooks.ParseRuncArgs: a call that is not create or run goes to runc
// untouched, with no daemon call; create and run make one call with the
// container id and the bundle ParseRuncArgs finds, then run runc (status
// 200), or hand the same arguments to snug-hook wrap (404, 405, 409).
func checkWrapperCall(t testing.TB, w runcWrapper, d *fakeDaemon, args []string) {
	t.Helper()
	dir := t.TempDir()
	call := hooks.ParseRuncArgs(args)
	stdout, stderr := w.run(t, dir, d.socket, args)
	got := d.take()
	if call.Bundle == "" {
		if stdout != called("runc", args) || len(got) != 0 {
			t.Fatalf("%q: a pass-through call made %d daemon calls and ran %q", args, len(got), stdout)
		}
		return
	}
	bundle := filepath.Join(dir, call.Bundle)
	if filepath.IsAbs(call.Bundle) {
		bundle = filepath.Clean(call.Bundle)
	}
	if len(got) != 1 {
		t.Fatalf("%q: %d daemon calls, want 1; ran %q, stderr %q", args, len(got), stdout, stderr)
	}
	if b := got[0]; b.ID != call.Container || filepath.Clean(b.Bundle) != bundle || b.Wrapper != w.path || b.Control != d.socket || b.Policy != "" {
		t.Fatalf("%q: daemon told %+v, want id %q, bundle %q, wrapper %q, control %q", args, b, call.Container, bundle, w.path, d.socket)
	}
	want := called("runc", args)
	switch d.status {
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusConflict:
		want = called("snug-hook", append([]string{"wrap"}, args...))
	case http.StatusOK:
	default:
		if !strings.Contains(stderr, "the fake says no") {
			t.Fatalf("%q: a daemon failing with %d: stderr %q does not say why", args, d.status, stderr)
		}
	}
	if stdout != want {
		t.Fatalf("%q: ran %q, want %q", args, stdout, want)
	}
}

// wrapperArgs are runc command lines as containerd's shim and users write
// them, and odd ones.
var wrapperArgs = [][]string{
	{"--root", "/run/containerd/runc/default", "--log", "/x/log.json", "--log-format", "json", "create", "--bundle", "/b/c1", "--pid-file", "/b/c1/init.pid", "c1"},
	{"--root", "/run/containerd/runc/default", "start", "c1"},
	{"--root", "/run/containerd/runc/default", "delete", "--force", "c1"},
	{"kill", "c1", "KILL"},
	{"run", "--bundle=/b", "--", "-b", "/x"},
	{"create", "-b=rel/dir", "c"},
	{"create", "--bundle", "", "c"},
	{"create", "c"},
	{"create", "--console-socket", "/s", "--no-pivot", "-b", "/b/../c", "id with \"quotes\" and \\"},
	{"create", "--bundle"},
	{"--root"},
	{"", "create"},
	{},
}

// TestRuncWrapperAgreesWithParseRuncArgs: the C wrapper reads runc's
// arguments as the Go wrapper does, tells the daemon what it found, and
// acts on each answer as documented.
func TestRuncWrapperAgreesWithParseRuncArgs(t *testing.T) {
	w := buildRuncWrapper(t)
	for _, status := range []int{http.StatusOK, http.StatusNotFound, http.StatusConflict, http.StatusBadRequest, http.StatusInternalServerError} {
		d := startFakeDaemon(t, status)
		for _, args := range wrapperArgs {
			checkWrapperCall(t, w, d, args)
		}
	}
}

// TestRuncWrapperHandsOver: with no daemon at the socket, snug-runc hands
// create to snug-hook wrap (which reads the policy file and reports a
// daemon that is down) and still passes every other call to runc. A
// bundle path JSON cannot carry goes the same way.
func TestRuncWrapperHandsOver(t *testing.T) {
	w := buildRuncWrapper(t)
	none := filepath.Join(t.TempDir(), "none.sock")
	create := []string{"create", "--bundle", "/b", "c1"}
	if out, _ := w.run(t, t.TempDir(), none, create); out != called("snug-hook", append([]string{"wrap"}, create...)) {
		t.Errorf("no daemon: ran %q", out)
	}
	if out, _ := w.run(t, t.TempDir(), none, []string{"start", "c1"}); out != called("runc", []string{"start", "c1"}) {
		t.Errorf("no daemon, start: ran %q", out)
	}
	d := startFakeDaemon(t, http.StatusOK)
	latin1 := []string{"create", "--bundle", "/b/\xe9", "c1"}
	if out, _ := w.run(t, t.TempDir(), d.socket, latin1); out != called("snug-hook", append([]string{"wrap"}, latin1...)) || len(d.take()) != 0 {
		t.Errorf("a bundle that is not ASCII: ran %q", out)
	}
	// A policy file named by a relative path means nothing to the daemon.
	if out, _ := w.run(t, t.TempDir(), d.socket, create, "SNUG_CONFIG=rel.toml"); out != called("snug-hook", append([]string{"wrap"}, create...)) {
		t.Errorf("relative SNUG_CONFIG: ran %q", out)
	}
	// An absolute one is no matter: SNUG_CONTROL names the daemon.
	w.run(t, t.TempDir(), d.socket, create, "SNUG_CONFIG=/etc/snug/other.toml")
	if got := d.take(); len(got) != 1 || got[0].Policy != "" {
		t.Errorf("SNUG_CONFIG: daemon told %+v", got)
	}
}

// TestRuncWrapperPoststopHook: `snug-runc hook poststop --control S`
// hands its stdin to the daemon as it is, and exits as a hook should: 0
// when done or when the daemon is down or fails (with a warning), 2 with
// the daemon's message for a state it refuses, 2 for a usage error.
func TestRuncWrapperPoststopHook(t *testing.T) {
	w := buildRuncWrapper(t)
	state := `{"ociVersion":"1.2.0","id":"c1","status":"stopped","bundle":"/b/c1"}`
	hook := func(control, stdin string, args ...string) (int, string) {
		t.Helper()
		if args == nil {
			args = []string{"hook", "poststop", "--control", control}
		}
		cmd := exec.Command(w.path, args...)
		cmd.Stdin = strings.NewReader(stdin)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), stderr.String()
	}
	for _, tc := range []struct {
		status, exit int
		stderr       string
	}{
		{http.StatusOK, 0, ""},
		{http.StatusBadRequest, 2, "the fake says no"},
		{http.StatusInternalServerError, 0, "warning: snug daemon: 500"},
	} {
		d := startFakeDaemon(t, tc.status)
		code, stderr := hook(d.socket, state)
		if code != tc.exit || !strings.Contains(stderr, tc.stderr) || (tc.stderr == "" && stderr != "") {
			t.Errorf("daemon answering %d: exit %d, stderr %q; want %d and %q", tc.status, code, stderr, tc.exit, tc.stderr)
		}
		if d.mu.Lock(); len(d.states) != 1 || d.states[0] != state {
			t.Errorf("daemon answering %d: got %q", tc.status, d.states)
		}
		d.mu.Unlock()
	}
	if code, stderr := hook(filepath.Join(t.TempDir(), "none.sock"), state); code != 0 || !strings.Contains(stderr, "warning") {
		t.Errorf("no daemon: exit %d, stderr %q", code, stderr)
	}
	for _, args := range [][]string{{"hook", "poststop"}, {"hook", "prestart", "--control", "/x"}, {"hook", "poststop", "--control", "rel"}} {
		if code, stderr := hook("", state, args...); code != 2 || !strings.Contains(stderr, "usage") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
	// A state of 2 MiB: the daemon gets more than it reads (1 MiB) and
	// refuses it; the hook does not hang or read it all.
	d := startFakeDaemon(t, http.StatusOK)
	if code, _ := hook(d.socket, strings.Repeat("x", 2<<20)); code != 0 || len(d.states) != 1 || len(d.states[0]) != 1<<20+1 {
		t.Errorf("2 MiB state: exit %d, daemon got %d bytes", code, len(d.states[0]))
	}
}

// TestRuncWrapperFindsRunc: without SNUG_RUNC, snug-runc runs the first
// runc on PATH that is an executable file and not snug-runc itself (as
// hooks.RealRunc): installed under the name runc, it must not run itself.
func TestRuncWrapperFindsRunc(t *testing.T) {
	w := buildRuncWrapper(t)
	dir := t.TempDir()
	aDir, self, real := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	for _, d := range []string{filepath.Join(aDir, "runc"), self, real} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(w.path, filepath.Join(self, "runc")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(w.runc, filepath.Join(real, "runc")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(w.path, "start", "c1")
	cmd.Env = append(os.Environ(), "SNUG_RUNC=", "PATH="+strings.Join([]string{aDir, self, real}, ":"))
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != called("runc", []string{"start", "c1"}) {
		t.Errorf("ran %q (%v), want the runc in %s", out, err, real)
	}
}

// TestRuncWrapperDefaults: the defaults compiled into snug-runc are
// config's.
func TestRuncWrapperDefaults(t *testing.T) {
	src, err := os.ReadFile("../cmd/snug-runc/snug-runc.c")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"DEFAULT_CONTROL":    config.Default().ControlAddress,
		"DEFAULT_POLICY":     config.DefaultPath,
		"PATH_BUNDLE_CREATE": wire.PathBundleCreate,
		"PATH_POSTSTOP":      wire.PathPoststop,
		"TIMEOUT_SECONDS":    fmt.Sprint(int(hooks.Timeout.Seconds())),
	} {
		m := regexp.MustCompile(`#define ` + name + ` "?([^"\s]*)"?`).FindSubmatch(src)
		if m == nil || string(m[1]) != want {
			t.Errorf("snug-runc.c: %s is %q, want %q", name, m, want)
		}
	}
}

// FuzzRuncWrapperArgs: TestRuncWrapperAgreesWithParseRuncArgs for any
// command line (each run execs the wrapper: slow, but it is the real
// binary).
func FuzzRuncWrapperArgs(f *testing.F) {
	for _, args := range wrapperArgs {
		f.Add(strings.Join(args, "\x00"))
	}
	w := buildRuncWrapper(f)
	d := startFakeDaemon(f, http.StatusOK)
	f.Fuzz(func(t *testing.T, joined string) {
		if !isASCII(joined) {
			t.Skip("non-ASCII goes to snug-hook wrap (TestRuncWrapperHandsOver)")
		}
		args := strings.Split(joined, "\x00")
		if joined == "" {
			args = nil
		}
		checkWrapperCall(t, w, d, args)
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
