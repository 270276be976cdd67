package daemon

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestListenUnix(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	sock := filepath.Join(dir, "snug.sock")
	l, err := listenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(sock)
	dst, _ := os.Stat(dir)
	if st.Mode().Perm() != 0o600 || dst.Mode().Perm() != 0o700 {
		t.Errorf("socket %v, dir %v: want 0600 in 0700", st.Mode().Perm(), dst.Mode().Perm())
	}
	// A live daemon's socket is not taken over.
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, err := listenUnix(sock); !errors.Is(err, ErrRunning) {
		t.Errorf("second listener: %v, want ErrRunning", err)
	}
	// A dead daemon's socket is replaced.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l2, err := listenUnix(sock)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()
	// Something that is not a socket is left alone.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("x"), 0o600)
	if _, err := listenUnix(file); err == nil {
		t.Error("listened over a regular file")
	}
	if b, _ := os.ReadFile(file); string(b) != "x" {
		t.Error("regular file changed")
	}
}

func TestListenUnixRefusesAnOpenDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	os.Mkdir(dir, 0o777)
	os.Chmod(dir, 0o777) // past the umask
	if _, err := listenUnix(filepath.Join(dir, "snug.sock")); err == nil || !strings.Contains(err.Error(), "writable by others") {
		t.Fatalf("listened in a world-writable directory: %v", err)
	}
	os.Chmod(dir, 0o755)
	l, err := listenUnix(filepath.Join(dir, "snug.sock"))
	if err != nil {
		t.Fatalf("a 0755 directory of the daemon's user: %v", err)
	}
	l.Close()
	if os.Geteuid() == 0 {
		other := filepath.Join(t.TempDir(), "other")
		os.Mkdir(other, 0o700)
		os.Chown(other, 65534, 65534)
		if _, err := listenUnix(filepath.Join(other, "snug.sock")); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Fatalf("listened in another user's directory: %v", err)
		}
	}
}

// TestListenUnixOverADyingListener: a dead daemon's socket still open for a
// moment elsewhere (in a child it was starting, between fork and exec)
// accepts a connection into its queue and resets it as it closes. The
// next daemon must not take that for a live daemon.
func TestListenUnixOverADyingListener(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "snug.sock")
	l, err := listenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	time.AfterFunc(100*time.Millisecond, func() { l.Close() }) // never accepts, then goes
	l2, err := listenUnix(sock)
	if err != nil {
		t.Fatalf("a socket whose listener went away: %v", err)
	}
	l2.Close()

	// A live server that greets at once, as gRPC does, is found quickly;
	// a silent one that holds the connection is found after probeWait.
	for _, greet := range []bool{true, false} {
		l, err := listenUnix(sock)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				if greet {
					c.Write([]byte{0})
				}
				defer c.Close()
			}
		}()
		if _, err := listenUnix(sock); !errors.Is(err, ErrRunning) {
			t.Errorf("a live server (greets: %v): %v, want ErrRunning", greet, err)
		}
		l.Close()
	}
}
