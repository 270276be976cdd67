package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/internal/sharedmount"
)

var (
	buildOnce sync.Once
	snugBin   string
	buildErr  error
)

// snugBinary builds cmd/snug and cmd/snug-hook once per test binary and
// returns the path of snug.
func snugBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "snug-bin-")
		if err != nil {
			buildErr = err
			return
		}
		snugBin = filepath.Join(dir, "snug")
		for _, cmd := range []string{"snug", "snug-hook"} {
			// As the Makefile builds them: snug-hook static and stripped,
			// it is on every container's start and stop.
			// snug with failpoints (internal/failpoint): the crash tests
			// kill it at named steps through SNUG_FAILPOINT.
			build := exec.Command("go", "build", "-tags", "failpoints", "-o", filepath.Join(dir, cmd), "github.com/snugfs/snug/cmd/"+cmd)
			if cmd == "snug-hook" {
				build.Args = []string{"go", "build", "-ldflags=-s -w", "-o", filepath.Join(dir, cmd), "github.com/snugfs/snug/cmd/" + cmd}
				build.Env = append(os.Environ(), "CGO_ENABLED=0")
			}
			out, err := build.CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", cmd, err, out)
				return
			}
		}
		// snug-runc, the runc wrapper, as make build builds it.
		if out, err := exec.Command(repoPath("scripts/build-snug-runc.sh"), filepath.Join(dir, "snug-runc")).CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build snug-runc: %v\n%s", err, out)
			return
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return snugBin
}

// hookBinary is cmd/snug-hook, built with snugBinary.
func hookBinary(t testing.TB) string {
	return filepath.Join(filepath.Dir(snugBinary(t)), "snug-hook")
}

// daemon is a `snug serve` process started by a test.
type daemon struct {
	t       testing.TB
	cmd     *exec.Cmd
	Config  string // its policy file
	Root    string
	Address string // snapshotter socket
	Control string // control socket
	log     string
	done    chan struct{}
	// Env is added to the process's environment at its next start.
	Env []string
	// Binary is the snug it runs: snugBinary's build unless set (a build
	// of other code, to compare two in one run).
	Binary string
}

// startDaemon writes a policy file in dir (extra TOML appended) and starts
// `snug serve` on it; it waits until the snapshotter socket answers. The
// process is stopped when the test ends.
func startDaemon(t testing.TB, dir, extra string) *daemon {
	t.Helper()
	return startDaemonBinary(t, dir, extra, "")
}

// startDaemonBinary is startDaemon running the snug binary bin ("": this
// code's).
func startDaemonBinary(t testing.TB, dir, extra, bin string) *daemon {
	t.Helper()
	d := &daemon{
		Binary:  bin,
		t:       t,
		Config:  filepath.Join(dir, "snug.toml"),
		Root:    filepath.Join(dir, "state"),
		Address: filepath.Join(dir, "run", "snug.sock"),
		Control: filepath.Join(dir, "run", "control.sock"),
		log:     filepath.Join(dir, "snug.log"),
	}
	// No containerd to follow unless the test runs one (startStackWith).
	if !strings.Contains(extra, "containerd_address") {
		extra = "containerd_address = \"\"\n" + extra
	}
	policy := fmt.Sprintf("root = %q\naddress = %q\ncontrol_address = %q\n%s", d.Root, d.Address, d.Control, extra)
	if err := os.WriteFile(d.Config, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	d.start()
	t.Cleanup(func() {
		d.Stop(syscall.SIGTERM)
		// A test that killed snug last leaves the shared bind of its state
		// directory, which a clean stop removes.
		if _, err := os.Stat(d.Root); err != nil {
			return
		}
		if err := sharedmount.Undo(d.Root); err != nil {
			t.Errorf("snug's state directory: %v", err)
		}
	})
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	d.spawn()
	if !d.answers() {
		d.t.Fatalf("snug serve exited at start:\n%s", d.Log())
	}
}

// answers waits until the spawned daemon serves on its socket, and reports
// false if the process ended first. A connection is not enough: the socket
// of a daemon killed just before can still take one into its queue (held
// open for a moment by a child that daemon was starting) and reset it. The
// gRPC server greets each connection (HTTP/2 settings) at once.
func (d *daemon) answers() bool {
	d.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", d.Address); err == nil {
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, _ := c.Read(make([]byte, 1))
			c.Close()
			if n > 0 {
				return true
			}
		}
		select {
		case <-d.done:
			return false
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("snug serve did not answer in 30s:\n%s", d.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// spawn starts the process without waiting for it to answer.
func (d *daemon) spawn() {
	d.t.Helper()
	logf, err := os.OpenFile(d.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		d.t.Fatal(err)
	}
	bin := d.Binary
	if bin == "" {
		bin = snugBinary(d.t)
	}
	d.cmd = exec.Command(bin, "--config", d.Config, "serve", "--log-level", "debug")
	d.cmd.Env = append(os.Environ(), d.Env...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		logf.Close()
		d.t.Fatal(err)
	}
	logf.Close()
	d.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(d.cmd, d.done)
}

// Stop sends sig and waits for the process to end (SIGKILL after 30 s).
func (d *daemon) Stop(sig syscall.Signal) {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		d.t.Errorf("snug serve ignored %v for 30s", sig)
	}
}

// Restart stops the daemon with sig and starts it again on the same state.
func (d *daemon) Restart(sig syscall.Signal) {
	d.t.Helper()
	d.Stop(sig)
	d.start()
}

// Log is what the daemon printed so far.
func (d *daemon) Log() string {
	b, _ := os.ReadFile(d.log)
	return string(b)
}

// Snapshotter is containerd's proxy client for this daemon: the path
// containerd takes to it. The connection closes when the test ends.
func (d *daemon) Snapshotter(t testing.TB) snapshots.Snapshotter {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+d.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "snug")
}

// Status is `snug status --json` of this daemon.
func (d *daemon) Status(t testing.TB) []api.ImageStatus {
	t.Helper()
	out, err := d.Snug(context.Background(), "status", "--json")
	if err != nil {
		t.Fatalf("snug status: %v\n%s", err, out)
	}
	var images []api.ImageStatus
	if err := json.Unmarshal([]byte(out), &images); err != nil {
		t.Fatalf("snug status --json: %v\n%s", err, out)
	}
	return images
}

// Snug runs the snug CLI against this daemon's policy.
func (d *daemon) Snug(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, snugBinary(d.t), append([]string{"--config", d.Config}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
