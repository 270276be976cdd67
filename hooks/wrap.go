package hooks

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/snugfs/snug/control/wire"
)

// WrapperName is the runc wrapper's name: the snug-runc script, which runs
// `snug-hook wrap` for create and run; snug-hook run under this name (a
// symlink) wraps every call itself.
const WrapperName = "snug-runc"

// Environment the wrapper reads.
const (
	// EnvRunc names the real runc (default: runc on PATH).
	EnvRunc = "SNUG_RUNC"
	// EnvConfig is the policy file the hooks read, if not the default.
	EnvConfig = "SNUG_CONFIG"
	// EnvControl is the daemon's control socket, if set: snug-runc and
	// snug-hook then do not read it from the policy file. snug-runc itself
	// never reads the policy file: without EnvControl it tries the default
	// socket and, if the daemon there runs another policy, hands over to
	// snug-hook.
	EnvControl = "SNUG_CONTROL"
)

// HookTimeout is the timeout, in seconds, written into config.json for
// snug's hooks: the runtime kills a hook that takes longer.
const HookTimeout = 10

// Command is how config.json runs snug's hooks: Path with Args, then the
// stage.
type Command struct {
	Path string
	Args []string // argv before the stage, from argv[0]: snug [--config F] hook
}

// HookFor is the OCI hook running stage.
func (c Command) HookFor(stage string) specs.Hook {
	t := HookTimeout
	return specs.Hook{Path: c.Path, Args: append(slices.Clone(c.Args), stage), Timeout: &t}
}

// detachScript starts a hook command ("$0" "$@") in the background with
// the state on its stdin, and exits at once: the runtime, which waits for
// its hook and for the hook's stdout and stderr, goes on at once. The
// background command's output goes to /dev/null; runc shows a hook's
// output only when the hook fails, which this one does not.
const detachScript = `exec 3<&0; "$0" "$@" <&3 3<&- >/dev/null 2>&1 & exit 0`

// Detached is the OCI hook running stage in the background, through
// /bin/sh: the runtime does not wait for snug. For poststop, whose work (a
// reclaim) is scheduled off the container's path anyway.
func (c Command) Detached(stage string) specs.Hook {
	h := c.HookFor(stage)
	return specs.Hook{Path: "/bin/sh", Args: append([]string{"sh", "-c", detachScript, c.Path}, h.Args[1:]...), Timeout: h.Timeout}
}

// StageHook is one hook for one stage of a bundle's config.json.
type StageHook struct {
	Stage string // createRuntime, poststop, ...
	Hook  specs.Hook
}

// SelfCommand is the Command of the running binary (snug-hook), with the
// policy file from EnvConfig.
func SelfCommand() (Command, error) {
	exe, err := os.Executable()
	if err != nil {
		return Command{}, err
	}
	args := []string{filepath.Base(exe)}
	if cfg := os.Getenv(EnvConfig); cfg != "" {
		args = append(args, "--config", cfg)
	}
	return Command{Path: exe, Args: append(args, "hook")}, nil
}

// runcGlobalsWithValue are runc's global flags that take a separate value.
var runcGlobalsWithValue = map[string]bool{"--root": true, "--log": true, "--log-format": true, "--criu": true, "--rootless": true}

// runcCreateWithValue are the flags of runc create and run that take a
// separate value; the others (--no-pivot, --detach, ...) take none.
var runcCreateWithValue = map[string]bool{
	"--bundle": true, "-b": true, "-bundle": true, "--console-socket": true,
	"--pid-file": true, "--preserve-fds": true, "--pidfd-socket": true,
}

// RuncCall is what the wrapper needs of a runc command line.
type RuncCall struct {
	Command string // create, run, kill, ...; "" for none
	// Bundle and Container are set for create and run only: the bundle
	// (--bundle/-b, default the working directory) and the container id.
	Bundle, Container string
}

// ParseRuncArgs reads runc's command line the way runc does: global flags,
// the command, its flags, then (for create and run) the container id.
func ParseRuncArgs(args []string) RuncCall {
	var call RuncCall
	i := 0
	for ; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			call.Command = a
			break
		}
		if runcGlobalsWithValue[a] {
			i++
		}
	}
	if call.Command != "create" && call.Command != "run" {
		return call
	}
	call.Bundle = "."
	for j := i + 1; j < len(args); j++ {
		a := args[j]
		switch {
		case a == "--":
			if j+1 < len(args) {
				call.Container = args[j+1]
			}
			j = len(args)
		case a == "--bundle" || a == "-b" || a == "-bundle":
			if j+1 < len(args) {
				call.Bundle = args[j+1]
			}
			j++
		case strings.HasPrefix(a, "--bundle="):
			call.Bundle = strings.TrimPrefix(a, "--bundle=")
		case strings.HasPrefix(a, "-b="):
			call.Bundle = strings.TrimPrefix(a, "-b=")
		case runcCreateWithValue[a]:
			j++
		case strings.HasPrefix(a, "-"):
		default: // the first argument: the id; runc ignores flags after it
			call.Container = a
			j = len(args)
		}
	}
	if call.Bundle == "" {
		call.Bundle = "." // runc takes an empty --bundle as the working directory
	}
	return call
}

// AddHooks adds hooks to the config.json of bundle, each once (a hook
// already there is not added again). Every other field keeps its value,
// written compactly; the file is replaced atomically.
func AddHooks(bundle string, add ...StageHook) error {
	path := filepath.Join(bundle, "config.json")
	data, err := readConfig(path)
	if err != nil {
		return err
	}
	return addHooks(path, data, add...)
}

// addHooks is AddHooks on config.json at path, whose content is data.
func addHooks(path string, data []byte, add ...StageHook) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if doc == nil { // the file says null
		return fmt.Errorf("%s: not a JSON object", path)
	}
	if err := unambiguous(doc, "hooks"); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	hooks := map[string]json.RawMessage{}
	if raw, ok := doc["hooks"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &hooks); err != nil {
			return fmt.Errorf("%s: hooks: %w", path, err)
		}
	}
	stages := make([]string, len(add))
	for i, a := range add {
		stages[i] = a.Stage
	}
	if err := unambiguous(hooks, stages...); err != nil {
		return fmt.Errorf("%s: hooks: %w", path, err)
	}
	for _, a := range add {
		stage, h := a.Stage, a.Hook
		var list []specs.Hook
		if raw, ok := hooks[stage]; ok && string(raw) != "null" {
			if err := json.Unmarshal(raw, &list); err != nil {
				return fmt.Errorf("%s: hooks.%s: %w", path, stage, err)
			}
		}
		if slices.ContainsFunc(list, func(o specs.Hook) bool { return o.Path == h.Path && slices.Equal(o.Args, h.Args) }) {
			continue
		}
		b, err := marshal(append(list, h))
		if err != nil {
			return err
		}
		hooks[stage] = b
	}
	b, err := marshal(hooks)
	if err != nil {
		return err
	}
	doc["hooks"] = b
	out, err := marshal(doc)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config.json.snug-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(out); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(fi.Mode().Perm()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// unambiguous refuses an object with a key that differs from one of names
// only in case ("Hooks", "poststop" and "PostStop"). runc reads keys
// without regard to case, the last one winning, so the hook AddHooks adds
// under the exact name could be hidden by, or hide, the other.
func unambiguous(obj map[string]json.RawMessage, names ...string) error {
	for k := range obj {
		for _, n := range names {
			if k != n && strings.EqualFold(k, n) {
				return fmt.Errorf("key %q is %q in another case", k, n)
			}
		}
	}
	return nil
}

// marshal is json.Marshal without HTML escaping, so the values AddHooks
// keeps are written as they were read ("&" stays "&", not "\u0026").
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// RealRunc is the runc the wrapper execs: EnvRunc, or runc on PATH unless
// that is the wrapper itself.
func RealRunc() (string, error) {
	if p := os.Getenv(EnvRunc); p != "" {
		return p, nil
	}
	self, _ := os.Executable()
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, "runc")
		if executableFile(p) != nil {
			continue
		}
		if r, err := filepath.EvalSymlinks(p); err == nil && r == self {
			continue
		}
		return p, nil
	}
	return "", fmt.Errorf("runc not found on PATH (set %s): %w", EnvRunc, exec.ErrNotFound)
}

// Wrap is the runc wrapper's work in Go: what snug-runc hands over when it
// cannot reach the daemon's bundle create call (cmd/snug-runc), and what
// snug-hook does when run as snug-runc. On create and run it does the
// createRuntime hook's work itself, before runc starts (the daemon at
// address gives the window its headroom and applies the class the
// annotation picks), and adds snug's poststop hook, detached, to the
// bundle's config.json. Then it execs the real runc with the same
// arguments. Nothing stops the container: a bundle it cannot edit, or a
// daemon that is down, is reported on stderr, and runc runs all the same.
// It returns only when the exec fails.
func Wrap(ctx context.Context, args []string, address string, stderr io.Writer) error {
	runc, err := RealRunc()
	if err != nil {
		return err
	}
	if call := ParseRuncArgs(args); call.Bundle != "" {
		dir, err := filepath.Abs(call.Bundle)
		if err != nil {
			return err
		}
		b := OpenBundle(dir, call.Container)
		c, err := SelfCommand()
		if err == nil {
			err = b.AddPoststop(c.Detached(StagePoststop))
		}
		if err != nil {
			fmt.Fprintf(stderr, "%s: %s %s without snug's poststop hook: %v\n", WrapperName, call.Command, call.Bundle, err)
		}
		if _, err := tell(ctx, wire.NewClient(address).ContainerStarting, b.Container()); err != nil {
			fmt.Fprintf(stderr, "%s: %s %s: warning: %v (the container goes on without it)\n", WrapperName, call.Command, call.Container, err)
		}
	}
	err = syscall.Exec(runc, append([]string{runc}, args...), os.Environ())
	return fmt.Errorf("exec %s: %w", runc, err)
}
