package cli

import (
	"context"
	"fmt"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/control"
)

// resize is `snug resize --quota SIZE [--json] CONTAINER|SNAPSHOT`: change
// the quota of a mounted image while its container runs, up to the image's
// ceiling (image.max_quota when it was made), through the daemon.
func (c *CLI) resize(ctx context.Context, args []string) int {
	fs := c.flagSet("resize")
	var quota sizeFlag
	fs.Var(&quota, "quota", "the new quota (at most the image's ceiling, at least what it stores)")
	asJSON := fs.Bool("json", false, "print a JSON object")
	pos, err := parse(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) != 1 {
		return c.usageError("resize takes one container or snapshot")
	}
	if !quota.set {
		return c.usageError("resize needs --quota SIZE")
	}
	cfg, err := c.policy()
	if err != nil {
		return c.fail(err)
	}
	out, err := control.NewClient(cfg.ControlAddress).Resize(ctx, pos[0], quota.v.Bytes())
	if err != nil {
		return c.fail(err)
	}
	if *asJSON {
		return c.writeJSON(out)
	}
	fmt.Fprintf(c.stdout, "%s (snapshot %s): quota %s -> %s, ceiling %s, stores %s\n", pos[0], out.ID,
		config.FormatBytes(out.QuotaBefore), config.FormatBytes(out.QuotaAfter),
		config.FormatBytes(out.CeilingBytes), config.FormatBytes(out.UsedBytes))
	return exitOK
}
