package cli

import (
	"context"
	"path/filepath"

	"github.com/containerd/log"

	"github.com/snugfs/snug/daemon"
)

// serve runs the daemon until SIGTERM or SIGINT.
func (c *CLI) serve(ctx context.Context, args []string) int {
	fs := c.flagSet("serve")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	pos, err := parse(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) != 0 {
		return c.usageError("serve takes no arguments")
	}
	if err := log.SetLevel(*level); err != nil {
		return c.usageError("--log-level: %v", err)
	}
	log.L.Logger.SetOutput(c.stderr)
	cfg, err := c.policy()
	if err != nil {
		return c.fail(err)
	}
	file, err := filepath.Abs(c.configPath)
	if err != nil {
		return c.fail(err)
	}
	if err := daemon.Run(ctx, cfg, file, c.policy); err != nil {
		return c.fail(err)
	}
	return exitOK
}
