package imagefs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/snugfs/snug/internal/urgent"
)

// toolDir holds the directory e2fsprogs tools are taken from ("" looks them
// up); see UseTools.
var toolDir atomic.Value

// UseTools makes every later tool run take mkfs.ext4, e2fsck, resize2fs and
// debugfs from dir alone (an e2fsprogs installed off the usual paths); ""
// goes back to the lookup in PATH, /usr/sbin and /sbin. A tool missing from
// dir is ErrToolMissing.
func UseTools(dir string) { toolDir.Store(dir) }

// toolBinary finds a tool's binary.
func toolBinary(name string) (string, error) {
	if dir, _ := toolDir.Load().(string); dir != "" {
		return exec.LookPath(filepath.Join(dir, name))
	}
	path, err := exec.LookPath(name)
	if err != nil {
		// e2fsprogs installs to /sbin, which a non-login PATH may lack.
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if p, e := exec.LookPath(dir + "/" + name); e == nil {
				return p, nil
			}
		}
	}
	return path, err
}

// toolRun is the outcome of one external tool run.
type toolRun struct {
	ExitCode int
	Stdout   string
	Stderr   string
	Duration time.Duration
}

// runTool runs an e2fsprogs tool and returns its output and exit code. It
// returns an error only when the tool could not run at all (missing, killed,
// context ended); callers decide what a non-zero exit code means.
func runTool(ctx context.Context, name string, args ...string) (toolRun, error) {
	path, err := toolBinary(name)
	if err != nil {
		return toolRun{}, fmt.Errorf("%s: %w", name, ErrToolMissing)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	start := time.Now()
	if err = cmd.Start(); err == nil {
		if isUrgent(ctx) {
			urgent.Process(cmd.Process.Pid)
		}
		err = cmd.Wait()
	}
	run := toolRun{Stdout: stdout.String(), Stderr: stderr.String(), Duration: time.Since(start)}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return run, nil
	case ctx.Err() != nil:
		return run, fmt.Errorf("%s: %w", name, ctx.Err())
	case errors.As(err, &exitErr) && exitErr.ExitCode() >= 0:
		run.ExitCode = exitErr.ExitCode()
		return run, nil
	default:
		return run, fmt.Errorf("%s: %w: %w", name, ErrToolFailed, err)
	}
}

// urgentKey marks a context whose tool runs a container waits for.
type urgentKey struct{}

// Urgent marks ctx so that the e2fsprogs tools run with it get the CPU and
// the disk before the host's other work (package urgent: its CPU cgroup,
// nice -10, the best-effort I/O class's highest level): a repair whose
// container is down while 50 others start on two CPUs otherwise takes
// several times its time on a quiet host.
func Urgent(ctx context.Context) context.Context { return context.WithValue(ctx, urgentKey{}, true) }

func isUrgent(ctx context.Context) bool { v, _ := ctx.Value(urgentKey{}).(bool); return v }

// failure turns a failed tool run into an error carrying its message.
func (r toolRun) failure(name string) error {
	msg := strings.TrimSpace(r.Stderr)
	if msg == "" {
		msg = strings.TrimSpace(r.Stdout)
	}
	if strings.Contains(msg, "No space left on device") || strings.Contains(msg, "Could not allocate block") {
		return fmt.Errorf("%s: %w: %s", name, ErrHostFull, lastLines(msg, 3))
	}
	return fmt.Errorf("%s: %w (exit %d): %s", name, ErrToolFailed, r.ExitCode, lastLines(msg, 3))
}

// lastLines joins the last n lines of s that are not blank.
func lastLines(s string, n int) string {
	lines := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' })
	lines = slices.DeleteFunc(lines, func(l string) bool { return strings.TrimSpace(l) == "" })
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}
