package cli

import (
	"context"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/control"
)

// reclaim is `snug reclaim [--json] [SNAPSHOT]`: repack one snapshot's
// image now, or every active one, through the daemon.
func (c *CLI) reclaim(ctx context.Context, args []string) int {
	fs := c.flagSet("reclaim")
	asJSON := fs.Bool("json", false, "print a JSON array")
	pos, err := parse(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) > 1 {
		return c.usageError("reclaim takes at most one snapshot")
	}
	key := ""
	if len(pos) == 1 {
		key = pos[0]
	}
	cfg, err := c.policy()
	if err != nil {
		return c.fail(err)
	}
	out, err := control.NewClient(cfg.ControlAddress).Reclaim(ctx, key)
	if err != nil {
		return c.fail(err)
	}
	if *asJSON {
		if out == nil {
			out = []api.ReclaimOutcome{}
		}
		return c.writeJSON(out)
	}
	rows := [][]string{{"SNAPSHOT", "FOOTPRINT", "WINDOW", "GAVE BACK", "TOOK"}}
	for _, o := range out {
		if o.Skipped != "" {
			rows = append(rows, []string{o.Snapshot, "-", "-", "skipped: " + o.Skipped, "-"})
			continue
		}
		rows = append(rows, []string{
			o.Snapshot,
			size(o.FootprintBefore) + " -> " + size(o.FootprintAfter),
			size(o.WindowBefore) + " -> " + size(o.WindowAfter),
			size(max(o.Gain(), 0)),
			o.Duration.Round(100_000).String(),
		})
	}
	c.table(rows)
	return exitOK
}
