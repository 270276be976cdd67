package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/internal/roottest"
)

// cacheDir is where scripts/deps.sh (make deps) builds containerd and
// crictl: $SNUG_CACHE, by default /var/cache/snug.
func cacheDir() string {
	if cache := os.Getenv("SNUG_CACHE"); cache != "" {
		return cache
	}
	return "/var/cache/snug"
}

func containerdBin() string { return filepath.Join(cacheDir(), "containerd-v2.4.2", "bin") }

// requireStack skips (or fails, under make test) unless everything the real
// stack needs is installed.
func requireStack(t *testing.T) {
	t.Helper()
	roottest.Require(t, "mkfs.ext4", "e2fsck", "runc", "umoci")
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
		if _, err := os.Stat(filepath.Join(containerdBin(), b)); err != nil {
			if os.Getenv("SNUG_REQUIRE_ROOT") == "1" {
				t.Fatalf("needs %s from `make deps` (SNUG_REQUIRE_ROOT=1): %v", b, err)
			}
			t.Skipf("needs %s from `make deps`", b)
		}
	}
}

var (
	imageOnce sync.Once
	imageTar  string
	imageErr  error
)

// testImage is the local test image's OCI archive (scripts/testimage.sh).
const testImageRef = "localhost/snug-test:latest"

func testImage(t *testing.T) string {
	t.Helper()
	imageOnce.Do(func() {
		dir, err := os.MkdirTemp("", "snug-image-")
		if err != nil {
			imageErr = err
			return
		}
		imageTar = filepath.Join(dir, "image.tar")
		out, err := exec.Command("bash", repoPath("scripts/testimage.sh"), imageTar, testImageRef).CombinedOutput()
		if err != nil {
			imageErr = fmt.Errorf("testimage.sh: %v\n%s", err, out)
		}
	})
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	return imageTar
}

func repoPath(rel string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", rel)
}

// stack is a throw-away containerd with a snug daemon as its proxy
// snapshotter, both started by the test and stopped when it ends.
type stack struct {
	t    *testing.T
	dir  string
	snug *daemon
	cmd  *exec.Cmd
	done chan struct{}
}

func startStack(t *testing.T, policy string) *stack {
	t.Helper()
	return startStackWith(t, policy, "", "")
}

// noCRI disables the plugins a test does not exercise: CRI, and NRI (which
// would also create /var/run/nri/nri.sock).
const noCRI = `"io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", ` +
	`"io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.sandbox.controller.v1.shim", "io.containerd.nri.v1.nri"`

// startStackWith also adds unpack_config entries (extraUnpack) and TOML
// (extraConfig) to containerd's config: other snapshotters to compare with.
func startStackWith(t *testing.T, policy, extraUnpack, extraConfig string, edits ...func(string) string) *stack {
	t.Helper()
	requireStack(t)
	return startStackIn(t, roottest.TempDir(t), policy, extraUnpack, extraConfig, edits...)
}

// withoutSnugDiffer leaves snug's differ out of containerd's unpack
// configuration: containerd's walking differ unpacks snug's layers.
func withoutSnugDiffer(conf string) string {
	return strings.Replace(conf, `, differ = "snug-diff"`, "", 1)
}

// startStackIn is startStackWith in a directory the caller made (with
// roottest.TempDir), e.g. with another filesystem mounted on its state/,
// snug's root.
// edits change containerd's configuration (withoutSnugDiffer).
func startStackIn(t *testing.T, dir, policy, extraUnpack, extraConfig string, edits ...func(string) string) *stack {
	t.Helper()
	s := &stack{t: t, dir: dir}
	// snug follows this containerd's task exits.
	s.snug = startDaemon(t, dir, fmt.Sprintf("containerd_address = %q\n", filepath.Join(dir, "containerd.sock"))+policy)
	tmpl, err := os.ReadFile(repoPath("scripts/containerd.toml.in"))
	if err != nil {
		t.Fatal(err)
	}
	disabled := noCRI
	if strings.Contains(extraConfig, "io.containerd.cri.v1") {
		disabled = `"io.containerd.nri.v1.nri"`
	}
	conf := strings.NewReplacer("@DIR@", dir, "@SNUG_SOCKET@", s.snug.Address, "@EXTRA_UNPACK@", extraUnpack,
		"@DISABLED_PLUGINS@", disabled).Replace(string(tmpl)) + extraConfig
	for _, edit := range edits {
		conf = edit(conf)
	}
	if err := os.WriteFile(filepath.Join(dir, "containerd.toml"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	// Registered after the daemon's and TempDir's cleanups, so it runs
	// before them: containers and containerd go first.
	t.Cleanup(s.stop)
	s.startContainerd()
	return s
}

// startContainerd starts containerd on the stack's config and waits until
// it answers.
func (s *stack) startContainerd() {
	t := s.t
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(s.dir, "containerd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(filepath.Join(containerdBin(), "containerd"), "--config", filepath.Join(s.dir, "containerd.toml"))
	// SNUG_CONFIG and SNUG_CONTROL reach snug-runc through the shim: it
	// and its hooks then use this stack's daemon, not the default one.
	// SNUG_STACK_PATH puts tools before the system's (the benchmark's
	// erofs-utils build).
	path := containerdBin() + ":/usr/sbin:/usr/bin:/sbin:/bin"
	if extra := os.Getenv("SNUG_STACK_PATH"); extra != "" {
		path = extra + ":" + path
	}
	s.cmd.Env = append(os.Environ(), "PATH="+path, "SNUG_CONFIG="+s.snug.Config, "SNUG_CONTROL="+s.snug.Control)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(s.cmd, s.done)
	// containerd listens once its plugins are loaded; blockfile's copies
	// its scratch image then (with an fsync: 4 GiB for bench-churn), which
	// once took more than 30 s on a disk still busy from the run before.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if c, err := net.Dial("unix", s.socket()); err == nil {
			c.Close()
			return
		}
		select {
		case <-s.done:
			t.Fatalf("containerd exited at start:\n%s", s.containerdLog())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not start:\n%s", s.containerdLog())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runcWrapper is snug-runc for this stack, laid out as `make build` does:
// next to snug-hook.
func (s *stack) runcWrapper() string {
	s.t.Helper()
	return installWrapper(s.t, filepath.Join(s.dir, "bin"))
}

// installWrapper puts snug-runc and snug-hook in dir, as links to the
// binaries the tests built: snug-runc finds snug-hook next to the file it
// really is.
func installWrapper(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "snug-runc")
	if _, err := os.Lstat(p); err == nil {
		return p
	}
	os.MkdirAll(dir, 0o755)
	built := filepath.Dir(hookBinary(t))
	for _, name := range []string{"snug-runc", "snug-hook"} {
		if err := os.Symlink(filepath.Join(built, name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// waitFollowing waits until snug follows containerd's task exits.
func (s *stack) waitFollowing() {
	s.t.Helper()
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if strings.Contains(s.snug.Log(), "following containerd's task exits") {
			return
		}
	}
	s.t.Fatalf("snug does not follow containerd's task exits:\n%s", lastLines(s.snug.Log(), 20))
}

// waitSnapshotter waits until containerd reaches snug again after snug
// restarted: containerd's gRPC connection to a proxy plugin fails calls at
// once with the last dial error until its reconnect backoff (about 1 s)
// has passed.
func (s *stack) waitSnapshotter() {
	s.t.Helper()
	var out string
	var err error
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if out, err = s.ctrErr("snapshots", "--snapshotter", "snug", "ls"); err == nil {
			return
		}
	}
	s.t.Fatalf("containerd does not reach snug again: %v\n%s", err, out)
}

func (s *stack) socket() string { return filepath.Join(s.dir, "containerd.sock") }

func (s *stack) containerdLog() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "containerd.log"))
	return string(b)
}

// stop kills every task, then stops containerd.
func (s *stack) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	if out, err := s.ctrErr("tasks", "ls", "-q"); err == nil {
		for _, id := range strings.Fields(out) {
			s.ctrErr("tasks", "kill", "-s", "KILL", id)
			s.ctrErr("tasks", "delete", "-f", id)
		}
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	if s.t.Failed() {
		s.t.Logf("snug log:\n%s", lastLines(s.snug.Log(), 40))
		s.t.Logf("containerd log:\n%s", lastLines(s.containerdLog(), 40))
	}
	s.keepLogs()
}

// keepLogs copies snug's and containerd's whole logs into the directory
// $SNUG_TEST_LOGS names, when it does, as TEST.snug.log and
// TEST.containerd.log: the failure output holds only their ends.
func (s *stack) keepLogs() {
	dir := os.Getenv("SNUG_TEST_LOGS")
	if dir == "" {
		return
	}
	name := strings.ReplaceAll(s.t.Name(), "/", "_")
	for suffix, text := range map[string]string{"snug": s.snug.Log(), "containerd": s.containerdLog()} {
		err := os.MkdirAll(dir, 0o755)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, name+"."+suffix+".log"), []byte(text), 0o644)
		}
		if err != nil {
			s.t.Logf("keeping the %s log: %v", suffix, err)
		}
	}
}

// runAtOnce runs n containers at once, named prefix-0 to prefix-(n-1),
// each with the ctr arguments args gives for its name, and waits for all.
// A run counts when ctr succeeds and, with prints, its output has the
// container's name; took has the milliseconds of each that did, failed a
// line for each that did not.
func (s *stack) runAtOnce(n int, prefix string, prints bool, args func(name string) []string) (took []float64, failed []string) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("%s-%d", prefix, i)
			start := time.Now()
			out, err := s.ctrErr(args(name)...)
			elapsed := ms(time.Since(start))
			mu.Lock()
			defer mu.Unlock()
			if err != nil || prints && !strings.Contains(out, name) {
				failed = append(failed, fmt.Sprintf("%s: %v: %s", name, err, lastLines(out, 3)))
				return
			}
			took = append(took, elapsed)
		}()
	}
	wg.Wait()
	return took, failed
}

// ctr runs ctr against this containerd and fails the test on error.
func (s *stack) ctr(args ...string) string {
	s.t.Helper()
	out, err := s.ctrErr(args...)
	if err != nil {
		s.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (s *stack) ctrErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(containerdBin(), "ctr"), s.ctrArgs(args...)...)
	cmd.Env = append(os.Environ(), "PATH="+containerdBin()+":/usr/sbin:/usr/bin:/sbin:/bin")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// ctrArgs are ctr's arguments for this stack: its socket, and for the
// commands that create a container its own runc root. runc's default,
// /run/containerd/runc, is shared by every containerd on the host: a
// container another stack (or an interrupted run) left there would make
// `runc create` of the same name fail with "container with given ID
// already exists".
func (s *stack) ctrArgs(args ...string) []string {
	out := []string{"-a", s.socket()}
	verb := 0
	for verb < len(args) && strings.HasPrefix(args[verb], "-") {
		if args[verb] == "-n" || args[verb] == "--namespace" {
			verb++
		}
		verb++
	}
	at := -1
	switch {
	case verb < len(args) && args[verb] == "run":
		at = verb + 1
	case verb+1 < len(args) && slices.Contains([]string{"containers", "container", "c"}, args[verb]) &&
		slices.Contains([]string{"create", "c"}, args[verb+1]):
		at = verb + 2
	}
	if at < 0 {
		return append(out, args...)
	}
	out = append(out, args[:at]...)
	out = append(out, "--runc-root", s.runcRoot())
	return append(out, args[at:]...)
}

// runcRoot is the stack's runc state directory (runc adds the namespace).
func (s *stack) runcRoot() string { return filepath.Join(s.dir, "runc") }

func (s *stack) importImage() {
	s.t.Helper()
	s.ctr("images", "import", "--snapshotter", "snug", "--base-name", strings.Split(testImageRef, ":")[0], testImage(s.t))
}

// status is `snug status --json` of the stack's daemon.
func (s *stack) status() []api.ImageStatus {
	s.t.Helper()
	return s.snug.Status(s.t)
}

// activeImage is the status of the active snapshot of a container.
func (s *stack) activeImage(container string) api.ImageStatus {
	s.t.Helper()
	for _, im := range s.status() {
		if im.Kind == "active" && strings.HasSuffix(im.Snapshot, "/"+container) {
			return im
		}
	}
	s.t.Fatalf("no active image for container %s in snug status", container)
	return api.ImageStatus{}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func TestCtrArgsGiveContainersTheStackRuncRoot(t *testing.T) {
	s := &stack{dir: "/d"}
	for _, tc := range []struct{ in, want string }{
		{"run --rm img c /bin/true", "-a /d/containerd.sock run --runc-root /d/runc --rm img c /bin/true"},
		{"-n k8s.io run -d img c", "-a /d/containerd.sock -n k8s.io run --runc-root /d/runc -d img c"},
		{"containers create img c", "-a /d/containerd.sock containers create --runc-root /d/runc img c"},
		{"c c img c", "-a /d/containerd.sock c c --runc-root /d/runc img c"},
		{"tasks ls -q", "-a /d/containerd.sock tasks ls -q"},
		{"containers ls", "-a /d/containerd.sock containers ls"},
		{"--debug images import x", "-a /d/containerd.sock --debug images import x"},
	} {
		if got := strings.Join(s.ctrArgs(strings.Fields(tc.in)...), " "); got != tc.want {
			t.Errorf("ctrArgs(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
