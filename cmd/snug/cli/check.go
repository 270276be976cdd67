package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/snugfs/snug/control"
)

// check is `snug check [--json] CONTAINER|SNAPSHOT`: the online check of a
// running container's image, through the daemon. It exits 1 when the image
// is damaged (the daemon then opens an incident for it).
func (c *CLI) check(ctx context.Context, args []string) int {
	fs := c.flagSet("check")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) != 1 {
		return c.usageError("check takes one container id or snapshot")
	}
	cfg, err := c.policy()
	if err != nil {
		return c.fail(err)
	}
	res, err := control.NewClient(cfg.ControlAddress).Check(ctx, pos[0])
	if err != nil {
		return c.fail(err)
	}
	if *asJSON {
		if code := c.writeJSON(res); code != exitOK {
			return code
		}
	} else {
		r := res.Result
		fmt.Fprintf(c.stdout, "snapshot %s: %s (%s; writes held %v; e2fsck -fn %v)\n",
			res.Snapshot, r.Status(), r.Method, r.Frozen.Round(100*time.Microsecond), r.Duration.Round(100*time.Microsecond))
		if r.JournalSkipped {
			fmt.Fprintln(c.stdout, "  the journal could not be replayed read-only: findings may include what it would fix")
		}
		if !r.Clean() {
			fmt.Fprintln(c.stdout, r.Output)
		}
		if res.Incident != "" {
			fmt.Fprintf(c.stdout, "incident %s opened (snug incidents %s)\n", res.Incident, res.Incident)
		}
	}
	if !res.Result.Clean() {
		return exitFail
	}
	return exitOK
}
