package daemon

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
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
