package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/snugfs/snug/internal/errclass"
)

// ErrRunning is returned when another daemon answers on a socket.
var ErrRunning = errclass.New("another snug daemon is serving", errdefs.ErrFailedPrecondition)

// listenUnix listens on a root-only Unix socket at path: its directory is
// made 0700 if new, the socket is 0600. A socket left by a daemon that died
// is replaced; one a live daemon answers on is not.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := checkSocketDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen %s: exists and is not a socket", path)
		}
		if answering(path) {
			return nil, fmt.Errorf("listen %s: %w", path, ErrRunning)
		}
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return nil, err
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// probeWait is how long answering waits for a server to greet or to drop
// a connection.
const probeWait = time.Second

// answering reports whether a process serves on the Unix socket at path.
// A connection that succeeds is not enough: a daemon killed while it was
// starting a program leaves its listening socket open in the child for the
// moment between fork and exec, and a connection made then is queued, and
// reset when the child execs. A daemon restarted at once (the crash tests
// do it, and so may a supervisor) took that for a live daemon and exited
// with ErrRunning. So the connection is read from: snug's gRPC server
// greets a new connection at once (HTTP/2 settings), and any live server
// holds it open; a reset or end of file asks again, and a socket that
// then refuses has nobody behind it.
func answering(path string) bool {
	for range 3 {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			return false // refused, or gone: nobody listens
		}
		c.SetReadDeadline(time.Now().Add(probeWait))
		n, err := c.Read(make([]byte, 1))
		c.Close()
		var ne net.Error
		if n > 0 || errors.As(err, &ne) && ne.Timeout() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true // it accepts and drops connection after connection: someone is there
}

// checkSocketDir refuses a socket directory someone other than the
// daemon's user could write to: they could put their own socket where the
// hooks and the CLI connect, or swap the daemon's between listen and chmod.
func checkSocketDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	switch {
	case int(sys.Uid) != os.Geteuid():
		return fmt.Errorf("socket directory %s is owned by uid %d, not by the daemon's user (uid %d)", dir, sys.Uid, os.Geteuid())
	case st.Mode().Perm()&0o022 != 0 && st.Mode()&os.ModeSticky == 0:
		return fmt.Errorf("socket directory %s is writable by others (%v): use a root-only directory", dir, st.Mode().Perm())
	}
	return nil
}
