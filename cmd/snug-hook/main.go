// Command snug-hook is snug's OCI hook and runc wrapper in a small binary
// that starts in about 2 ms (bench/results/hook-cost.txt), for the
// container's critical path:
//
//	snug-hook [--config PATH] hook createRuntime|prestart|poststop   (state on stdin)
//	snug-hook wrap RUNC-ARGS...   (on create and run: createRuntime's work, add the poststop hook; exec runc)
//
// snug-runc, the runc wrapper (cmd/snug-runc, C), hands create and run
// here when the daemon cannot do the work for it (no daemon at the socket,
// another policy, a bundle it cannot see). A symlink snug-runc -> snug-hook
// also works: every call then goes through snug-hook.
//
// It reads control_address from $SNUG_CONTROL or the policy file (default
// /etc/snug/config.toml) and behaves as `snug hook`: bad input exits 2
// with a message; a daemon that is down or fails is a warning, exit 0.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/hooks"
)

func main() {
	args := os.Args[1:]
	if filepath.Base(os.Args[0]) == hooks.WrapperName || (len(args) > 0 && args[0] == "wrap") {
		if len(args) > 0 && args[0] == "wrap" {
			args = args[1:]
		}
		path := config.DefaultPath
		if p := os.Getenv(hooks.EnvConfig); p != "" {
			path = p
		}
		address, err := controlAddress(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: warning: %v; using the default control socket\n", hooks.WrapperName, err)
		}
		err = hooks.Wrap(context.Background(), args, address, os.Stderr)
		fmt.Fprintf(os.Stderr, "%s: %v\n", hooks.WrapperName, err)
		os.Exit(1)
	}
	os.Exit(run(args))
}

func run(args []string) int {
	// The same arguments as `snug [--config PATH] hook STAGE`.
	path := config.DefaultPath
	if len(args) > 2 && args[0] == "--config" {
		path, args = args[1], args[2:]
	}
	if len(args) != 2 || args[0] != "hook" {
		fmt.Fprintf(os.Stderr, "usage: snug-hook [--config PATH] hook %s|%s|%s < state.json\n", hooks.StageCreateRuntime, hooks.StagePrestart, hooks.StagePoststop)
		return 2
	}
	address, err := controlAddress(path)
	return hooks.Main(context.Background(), args[1], address, err, os.Stdin, os.Stderr)
}

// controlAddress is $SNUG_CONTROL, else the control socket the policy file
// at path names, or the default one, with the file's error, when it cannot
// be read.
func controlAddress(path string) (string, error) {
	if a := os.Getenv(hooks.EnvControl); a != "" {
		return a, nil
	}
	cfg, err := config.Load(path)
	if err != nil {
		return config.Default().ControlAddress, err
	}
	return cfg.ControlAddress, nil
}
