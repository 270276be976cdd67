package hooks

import (
	"bytes"
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

// ParseRuncArgs finds runc's command and, for create and run, the bundle
// (--bundle/-b, default the working directory).
func ParseRuncArgs(args []string) (command, bundle string) {
	i := 0
	for ; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			command = a
			break
		}
		if runcGlobalsWithValue[a] {
			i++
		}
	}
	if command != "create" && command != "run" {
		return command, ""
	}
	bundle = "."
	for j := i + 1; j < len(args); j++ {
		a := args[j]
		switch {
		case a == "--":
			j = len(args)
		case a == "--bundle" || a == "-b" || a == "-bundle":
			if j+1 < len(args) {
				bundle = args[j+1]
				j++
			}
		case strings.HasPrefix(a, "--bundle="):
			bundle = strings.TrimPrefix(a, "--bundle=")
		case strings.HasPrefix(a, "-b="):
			bundle = strings.TrimPrefix(a, "-b=")
		}
	}
	if bundle == "" {
		bundle = "." // runc takes an empty --bundle as the working directory
	}
	return command, bundle
}

// AddHooks adds snug's createRuntime and poststop hooks to the config.json
// of bundle, once (a hook already there is not added again). Every other
// field keeps its value, written compactly; the file is replaced atomically.
func AddHooks(bundle string, c Command) error {
	path := filepath.Join(bundle, "config.json")
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
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
	if err := unambiguous(hooks, StageCreateRuntime, StagePoststop); err != nil {
		return fmt.Errorf("%s: hooks: %w", path, err)
	}
	for _, stage := range []string{StageCreateRuntime, StagePoststop} {
		var list []specs.Hook
		if raw, ok := hooks[stage]; ok && string(raw) != "null" {
			if err := json.Unmarshal(raw, &list); err != nil {
				return fmt.Errorf("%s: hooks.%s: %w", path, stage, err)
			}
		}
		h := c.HookFor(stage)
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
	tmp, err := os.CreateTemp(bundle, ".config.json.snug-*")
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
		if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			continue
		}
		if r, err := filepath.EvalSymlinks(p); err == nil && r == self {
			continue
		}
		return p, nil
	}
	return "", fmt.Errorf("runc not found on PATH (set %s): %w", EnvRunc, exec.ErrNotFound)
}

// Wrap is the runc wrapper: it adds snug's hooks to the bundle of a create
// or run, then execs the real runc with the same arguments. A bundle it
// cannot edit is reported on stderr and runs without snug's hooks: the
// wrapper never stops a container from starting. It returns only when the
// exec fails.
func Wrap(args []string, stderr io.Writer) error {
	runc, err := RealRunc()
	if err != nil {
		return err
	}
	if cmd, bundle := ParseRuncArgs(args); bundle != "" {
		c, err := SelfCommand()
		if err == nil {
			err = AddHooks(bundle, c)
		}
		if err != nil {
			fmt.Fprintf(stderr, "%s: %s %s without snug's hooks: %v\n", WrapperName, cmd, bundle, err)
		}
	}
	err = syscall.Exec(runc, append([]string{runc}, args...), os.Environ())
	return fmt.Errorf("exec %s: %w", runc, err)
}
