package fsck

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snugfs/snug/internal/roottest"
	"github.com/snugfs/snug/internal/urgent"
)

func TestParseRaised(t *testing.T) {
	for _, tc := range []struct {
		in   string
		pid  int
		from string
		ok   bool
	}{
		{"123 /\n", 123, "/", true},
		{"4567 /system.slice/containerd.service\n", 4567, "/system.slice/containerd.service", true},
		{"12 /a b\n", 12, "/a b", true},
		{"", 0, "", false},
		{"123\n", 0, "", false},
		{"0 /\n", 0, "", false},
		{"-5 /\n", 0, "", false},
		{"x /\n", 0, "", false},
		{"123 relative\n", 0, "", false},
		{"123 /a\n/b\n", 0, "", false},
	} {
		pid, from, err := parseRaised(tc.in)
		if (err == nil) != tc.ok || pid != tc.pid || from != tc.from {
			t.Errorf("parseRaised(%q) = %d, %q, %v", tc.in, pid, from, err)
		}
	}
}

func FuzzParseRaised(f *testing.F) {
	f.Add("123 /\n")
	f.Add("4567 /system.slice/containerd.service\n")
	f.Add("1 \n")
	f.Fuzz(func(t *testing.T, text string) {
		pid, from, err := parseRaised(text)
		if err != nil {
			return
		}
		if pid <= 0 || !strings.HasPrefix(from, "/") || strings.ContainsAny(from, "\n\x00") {
			t.Fatalf("parseRaised(%q) = %d, %q", text, pid, from)
		}
		if p2, f2, err := parseRaised(strconv.Itoa(pid) + " " + from + "\n"); err != nil || p2 != pid || f2 != from {
			t.Fatalf("round trip of %d %q: %d %q %v", pid, from, p2, f2, err)
		}
	})
}

// TestRaiseDaemonLowersWhatItStarts: a "daemon" listening on a unix socket
// (standing in for containerd) is moved into urgent.Cgroup while an
// incident holds the raise; a program it starts meanwhile goes back to
// where the daemon came from, unless it is the incident's container's shim
// program; at the release the daemon goes back and the record goes. A
// record a killed daemon left is put right at the next start.
func TestRaiseDaemonLowersWhatItStarts(t *testing.T) {
	roottest.Require(t)
	ctx := context.Background()
	if err := urgent.Setup(); err != nil {
		t.Skipf("no CPU cgroup: %v", err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "d.sock")
	// The daemon listens, then starts two programs after a while: one
	// with a shim's arguments for the incident's container, one other.
	script := `exec python3 -c '
import socket, subprocess, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
time.sleep(1.5)
a = subprocess.Popen(["sleep", "7"])
b = subprocess.Popen(["containerd-shim-runc-v2", "-c", "sleep 8; :", "x", "-namespace", "ns", "-id", "c1"], executable="/bin/sh")
time.sleep(30)
' ` + sock
	daemon := exec.Command("sh", "-c", script)
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { daemon.Process.Kill(); daemon.Wait() })
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the daemon does not listen")
		}
	}
	from, err := urgent.CgroupOf(daemon.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	c := NewContainerd(sock, nil)
	c.ReconcileDaemon(ctx, dir)
	release := c.RaiseDaemon(ctx, []ContainerRef{{Namespace: "ns", ID: "c1"}})
	if !urgent.In(daemon.Process.Pid) {
		t.Fatal("the daemon was not raised")
	}
	if pid, rec, err := readRaised(filepath.Join(dir, daemonRaisedFile)); err != nil || pid != daemon.Process.Pid || rec != from {
		t.Fatalf("record: %d %q %v", pid, rec, err)
	}
	// Its two children, once started.
	var other, shim int
	for end := time.Now().Add(10 * time.Second); other == 0 || shim == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the daemon's children did not start")
		}
		out, _ := exec.Command("pgrep", "-P", strconv.Itoa(daemon.Process.Pid)).Output()
		for _, f := range strings.Fields(string(out)) {
			b, _ := os.ReadFile("/proc/" + f + "/cmdline")
			switch {
			case strings.Contains(string(b), "sleep\x007"):
				other, _ = strconv.Atoi(f)
			case strings.HasPrefix(string(b), "containerd-shim"):
				shim, _ = strconv.Atoi(f)
			}
		}
	}
	time.Sleep(200 * time.Millisecond) // the watch's move
	if urgent.In(other) {
		t.Error("a program the raised daemon started stayed in the repair's cgroup")
	}
	if !urgent.In(shim) {
		t.Error("the incident's container's shim program was moved out")
	}
	release()
	if urgent.In(daemon.Process.Pid) {
		t.Error("the daemon stayed raised after the release")
	}
	if _, err := os.Stat(filepath.Join(dir, daemonRaisedFile)); !os.IsNotExist(err) {
		t.Errorf("the record stays after the release: %v", err)
	}
	urgent.Lower(shim, from)

	// A daemon killed while raised: the record put right at the next start.
	if _, err := urgent.Raise(daemon.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := writeRaised(filepath.Join(dir, daemonRaisedFile), daemon.Process.Pid, from); err != nil {
		t.Fatal(err)
	}
	NewContainerd(sock, nil).ReconcileDaemon(ctx, dir)
	if urgent.In(daemon.Process.Pid) {
		t.Error("a raise left by a killed daemon was not undone at start")
	}
	if _, err := os.Stat(filepath.Join(dir, daemonRaisedFile)); !os.IsNotExist(err) {
		t.Errorf("the record stays after the reconcile: %v", err)
	}
}
