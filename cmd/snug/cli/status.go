package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/snugfs/snug/api"
	"github.com/snugfs/snug/control"
)

// status lists the images the daemon serves: one row per image.
func (c *CLI) status(ctx context.Context, args []string) int {
	fs := c.flagSet("status")
	asJSON := fs.Bool("json", false, "print a JSON array")
	pos, err := parse(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) != 0 {
		return c.usageError("status takes no arguments")
	}
	cfg, err := c.policy()
	if err != nil {
		return c.fail(err)
	}
	images, err := control.NewClient(cfg.ControlAddress).Status(ctx)
	if err != nil {
		return c.fail(err)
	}
	if *asJSON {
		if images == nil {
			images = []api.ImageStatus{}
		}
		return c.writeJSON(images)
	}
	rows := [][]string{{"KIND", "SNAPSHOT", "QUOTA", "CEILING", "WINDOW", "USED", "FOOTPRINT", "SWELL", "LAST GROW", "LAST RECLAIM", "CLASS", "IO", "HEALTH"}}
	now := time.Now()
	for _, im := range images {
		rows = append(rows, []string{
			im.Kind, im.Snapshot,
			size(im.QuotaBytes), size(im.CeilingBytes), size(im.WindowBytes), size(im.UsedBytes),
			size(im.FootprintBytes), swell(im.Stats), ago(now, im.LastGrow), ago(now, im.LastReclaim),
			orDash(im.Class), ioColumn(im), imageHealth(im),
		})
	}
	c.table(rows)
	return exitOK
}

// ioColumn is the IO column: the loop device's mode, "+async" when the
// journal commits asynchronously (image.async_commit).
func ioColumn(im api.ImageStatus) string {
	if im.Commit == "async" {
		return orDash(im.IO) + "+async"
	}
	return orDash(im.IO)
}

// imageHealth is the HEALTH column: the filesystem's state, or why the
// image could not be measured or was marked damaged, and whether its loop
// device was found dropping cache flushes while it was mounted.
func imageHealth(im api.ImageStatus) string {
	h := health(im.Stats)
	if im.Problem != "" {
		h = im.Problem
	}
	if im.Damaged != "" {
		h = "damaged layer: " + im.Damaged
	}
	if im.FlushesDropped > 0 {
		h += fmt.Sprintf(", flushes dropped (%d)", im.FlushesDropped)
	}
	return h
}

// orDash is s, or "-" when it is empty (a layer has no class or I/O mode
// of its own; a container's image picks no class).
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ago is how long before now t was, shortly ("-" for never).
func ago(now time.Time, t *time.Time) string {
	if t == nil {
		return "-"
	}
	d := now.Sub(*t)
	switch {
	case d < time.Minute:
		return d.Round(100*time.Millisecond).String() + " ago"
	case d < time.Hour:
		return d.Round(time.Second).String() + " ago"
	}
	return d.Round(time.Minute).String() + " ago"
}
