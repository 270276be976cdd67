package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/control/wire"
	"github.com/snugfs/snug/hooks"
)

// hook is `snug hook STAGE`: an OCI hook, the state on stdin. Bad input
// exits 2 with a message; a daemon that is down or fails is a warning on
// stderr and exit 0, so the container is never held up by snug.
func (c *CLI) hook(ctx context.Context, args []string) int {
	if len(args) != 1 {
		return c.usageError("hook takes one stage: %s, %s or %s", hooks.StageCreateRuntime, hooks.StagePrestart, hooks.StagePoststop)
	}
	stage := args[0]
	cfg, err := c.policy()
	if err != nil {
		fmt.Fprintf(c.stderr, "snug hook %s: warning: %v; using the default control socket\n", stage, err)
		cfg = config.Default()
	}
	address := cfg.ControlAddress
	res, err := hooks.Hook(ctx, stage, c.stdin, wire.NewClient(address))
	if err != nil {
		fmt.Fprintf(c.stderr, "snug hook %s: %v\n", stage, err)
		if errors.Is(err, hooks.ErrBadState) || errors.Is(err, hooks.ErrUnknownStage) {
			return exitUsage
		}
		return exitFail
	}
	if res.Warning != nil {
		fmt.Fprintf(c.stderr, "snug hook %s: container %s: warning: %v (the container goes on without it)\n", stage, res.Container, res.Warning)
	}
	return exitOK
}
