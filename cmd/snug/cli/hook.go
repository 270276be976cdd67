package cli

import (
	"context"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/hooks"
)

// hook is `snug hook STAGE`: an OCI hook, the state on stdin. Bad input
// exits 2 with a message; a daemon that is down or fails is a warning on
// stderr and exit 0, so the container is never held up by snug.
func (c *CLI) hook(ctx context.Context, args []string) int {
	args, err := parse(c.flagSet("hook"), args)
	if err != nil {
		return exitUsage
	}
	if len(args) != 1 {
		return c.usageError("hook takes one stage: %s, %s or %s", hooks.StageCreateRuntime, hooks.StagePrestart, hooks.StagePoststop)
	}
	cfg, err := c.policy()
	if err != nil {
		cfg = config.Default()
	}
	return hooks.Main(ctx, args[0], cfg.ControlAddress, err, c.stdin, c.stderr)
}
