package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/imagefs"
)

// hookPolicy: trimming while running is off, so the space a container
// frees comes back only through the reclaim its stop triggers; class "big"
// has a larger headroom.
const hookPolicy = containerPolicy + `
[reclaim]
trim_after = 0
[policies.big.window]
headroom = "128MiB"
`

// churnThenExit writes 150 MiB, deletes 100 MiB of it and exits: the image
// then holds 50 MiB and the host still pays for 150 until a reclaim.
const churnThenExit = `set -e; for i in 1 2 3; do dd if=/dev/urandom of=/f$i bs=1M count=50 2>/dev/null; done; sync; rm /f1 /f2; sync; echo done`

// waitReclaimed waits until the stopped container's image has been
// reclaimed and its footprint is within 1.03 x used + 8 MiB, and returns
// its status and how long that took.
func (s *stack) waitReclaimed(container string, limit time.Duration) (api.ImageStatus, time.Duration) {
	s.t.Helper()
	start := time.Now()
	var im api.ImageStatus
	for time.Since(start) < limit {
		im = s.activeImage(container)
		if im.LastReclaim != nil && im.FootprintBytes <= imagefs.PackedFootprint(im.UsedBytes) {
			return im, time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("%s not reclaimed %v after its stop: footprint %d MiB, used %d MiB, %+v",
		container, limit, im.FootprintBytes>>20, im.UsedBytes>>20, im.Activity)
	return im, 0
}

// TestHooksThroughRuncWrapper: `ctr run --runc-binary snug-runc` puts
// snug's hooks in the container: createRuntime gives the window its class's
// headroom before the process starts (the class from an OCI annotation),
// and poststop has the image reclaimed within seconds of the stop.
func TestHooksThroughRuncWrapper(t *testing.T) {
	s := startStack(t, hookPolicy)
	s.importImage()
	wrapper := s.runcWrapper()

	s.ctr("run", "-d", "--runc-binary", wrapper, "--annotation", "io.snugfs.policy=big",
		"--snapshotter", "snug", testImageRef, "hooked-sleeper", "/bin/sleep", "600")
	im := s.activeImage("hooked-sleeper")
	if im.State != "running" || im.Container != "hooked-sleeper" || im.Class != "big" || im.FreeBytes < 127<<20 {
		t.Fatalf("after createRuntime: state %q, container %q, class %q, free %d MiB; want running, hooked-sleeper, big, 128 MiB",
			im.State, im.Container, im.Class, im.FreeBytes>>20)
	}

	out := s.ctr("run", "--runc-binary", wrapper, "--snapshotter", "snug", testImageRef, "hooked-churn", "/bin/sh", "-c", churnThenExit)
	if !strings.Contains(out, "done") {
		t.Fatalf("container output %q", out)
	}
	im, took := s.waitReclaimed("hooked-churn", 5*time.Second)
	t.Logf("reclaimed %v after the stop: footprint %d MiB for %d MiB used", took, im.FootprintBytes>>20, im.UsedBytes>>20)
	if im.State != "stopped" || im.Reclaims != 1 {
		t.Errorf("after poststop: %+v", im.Activity)
	}
	// The wrapper did createRuntime's work itself: the bundle's
	// config.json has snug's poststop hook, once, and no createRuntime.
	spec := s.bundleConfig("hooked-sleeper")
	if n := strings.Count(spec, `"hook","createRuntime"`); n != 0 {
		t.Errorf("createRuntime hook %d times in config.json:\n%s", n, spec)
	}
	// The daemon added it: snug-runc's own hook mode, on this daemon.
	if n := strings.Count(spec, fmt.Sprintf(`"snug-runc","hook","poststop","--control",%q`, s.snug.Control)); n != 1 {
		t.Errorf("poststop hook %d times in config.json:\n%s", n, spec)
	}
}

// TestWrapperFailsSafe: with no daemon to answer, and with a bundle it
// cannot edit (whether snug-runc hands it to snug-hook wrap or the daemon
// refuses it), snug-runc still runs runc, with the same arguments, and
// says on stderr what it could not do.
func TestWrapperFailsSafe(t *testing.T) {
	dir := t.TempDir()
	wrapper := installWrapper(t, filepath.Join(dir, "bin"))
	policy := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(policy, []byte(fmt.Sprintf("control_address = %q\n", filepath.Join(dir, "none.sock"))), 0o600); err != nil {
		t.Fatal(err)
	}
	fakeRunc := filepath.Join(dir, "runc")
	if err := os.WriteFile(fakeRunc, []byte("#!/bin/sh\necho \"runc $*\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle")
	os.Mkdir(bundle, 0o755)
	os.Mkdir(filepath.Join(dir, "live"), 0o700)
	live := startDaemon(t, filepath.Join(dir, "live"), "")
	for _, tc := range []struct{ name, config, control, warn string }{
		{"daemon down", `{"ociVersion":"1.2.0","root":{"path":"rootfs"}}`, "", "snug daemon is not running"},
		{"broken config.json", `{not json`, "", "without snug's poststop hook"},
		// The daemon is up and refuses the bundle: snug-runc says why.
		{"broken config.json, daemon up", `{not json`, live.Control, "snug daemon: 400"},
	} {
		if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(tc.config), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(wrapper, "--root", "/run/x", "create", "--bundle", bundle, "--pid-file", "p", "c1")
		cmd.Env = append(os.Environ(), "SNUG_RUNC="+fakeRunc, "SNUG_CONFIG="+policy, "SNUG_CONTROL="+tc.control)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v: %s", tc.name, err, stderr.String())
		}
		if want := "runc --root /run/x create --bundle " + bundle + " --pid-file p c1\n"; string(out) != want {
			t.Errorf("%s: runc ran as %q, want %q", tc.name, out, want)
		}
		if !strings.Contains(stderr.String(), tc.warn) {
			t.Errorf("%s: stderr %q does not say %q", tc.name, stderr.String(), tc.warn)
		}
		t.Logf("%s: %s", tc.name, strings.TrimSpace(stderr.String()))
	}
}

// TestTaskExitReclaimsWithoutHooks: a container started without snug's
// hooks is still reclaimed when it stops, through containerd's task exit
// event.
func TestTaskExitReclaimsWithoutHooks(t *testing.T) {
	s := startStack(t, hookPolicy)
	s.importImage()
	s.waitFollowing()
	out := s.ctr("run", "--snapshotter", "snug", testImageRef, "plain-churn", "/bin/sh", "-c", churnThenExit)
	if !strings.Contains(out, "done") {
		t.Fatalf("container output %q", out)
	}
	im, took := s.waitReclaimed("plain-churn", 5*time.Second)
	t.Logf("reclaimed %v after the exit event: footprint %d MiB for %d MiB used", took, im.FootprintBytes>>20, im.UsedBytes>>20)
	if im.State != "stopped" || im.Container != "plain-churn" || im.Reclaims != 1 {
		t.Errorf("after the exit event: %+v", im.Activity)
	}
	// An exec'd process exiting is not the container stopping.
	s.ctr("run", "-d", "--snapshotter", "snug", testImageRef, "plain-sleeper", "/bin/sleep", "600")
	s.ctr("tasks", "exec", "--exec-id", "e1", "plain-sleeper", "/bin/true")
	time.Sleep(time.Second)
	if im := s.activeImage("plain-sleeper"); im.State != "" || im.Reclaims != 0 {
		t.Errorf("an exec's exit was taken for the container's: %+v", im.Activity)
	}
}

// bundleConfig is the config.json of a running container's bundle.
func (s *stack) bundleConfig(container string) string {
	s.t.Helper()
	matches, _ := filepath.Glob(filepath.Join(s.dir, "containerd", "state", "io.containerd.runtime.v2.task", "*", container, "config.json"))
	if len(matches) == 0 {
		s.t.Fatalf("no bundle for %s under %s", container, s.dir)
	}
	b, err := os.ReadFile(matches[0])
	if err != nil {
		s.t.Fatal(err)
	}
	return string(b)
}
