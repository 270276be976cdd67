package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/snugfs/snug/control"
	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/imagefs"
)

// incidents is `snug incidents [--json] [ID]`: the error monitor's
// incidents, each with its timeline and e2fsck's reports (their last lines;
// all of them for one incident named by ID).
func (c *CLI) incidents(ctx context.Context, args []string) int {
	fs := c.flagSet("incidents")
	asJSON := fs.Bool("json", false, "print a JSON array")
	pos, err := parse(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) > 1 {
		return c.usageError("incidents takes at most one incident id")
	}
	cfg, err := c.policy()
	if err != nil {
		return c.fail(err)
	}
	all, err := control.NewClient(cfg.ControlAddress).Incidents(ctx)
	if err != nil {
		return c.fail(err)
	}
	lines := 4
	if len(pos) == 1 {
		var one []fsck.Incident
		for _, inc := range all {
			if inc.ID == pos[0] {
				one = append(one, inc)
			}
		}
		if len(one) == 0 {
			return c.fail(fmt.Errorf("no incident %q", pos[0]))
		}
		all, lines = one, 0
	}
	if *asJSON {
		if all == nil {
			all = []fsck.Incident{}
		}
		return c.writeJSON(all)
	}
	if len(all) == 0 {
		fmt.Fprintln(c.stdout, "no incidents")
		return exitOK
	}
	for i, inc := range all {
		if i > 0 {
			fmt.Fprintln(c.stdout)
		}
		c.printIncident(inc, lines)
	}
	return exitOK
}

// printIncident writes one incident: a header, its containers, its steps
// with their times from detection, and e2fsck's reports (the last lines of
// each, or all of them for lines 0).
func (c *CLI) printIncident(inc fsck.Incident, lines int) {
	kind := "image"
	if inc.Layer {
		kind = "layer"
	}
	fmt.Fprintf(c.stdout, "incident %s: %s\n", inc.ID, strings.ToUpper(string(inc.State)))
	fmt.Fprintf(c.stdout, "  snapshot %s (%s %s)\n", inc.Snapshot, kind, inc.Image)
	errName := inc.Error
	if errName == "" {
		errName = "error"
	}
	fmt.Fprintf(c.stdout, "  %s x%d, noticed by %s at %s\n", errName, inc.Errors, inc.Source, inc.DetectedAt.Local().Format("2006-01-02 15:04:05.000"))
	if d := inc.Detail; d != nil && d.First != nil {
		fmt.Fprintf(c.stdout, "  first error: %s line %d, inode %d, block %d\n", d.First.Function, d.First.Line, d.First.Inode, d.First.Block)
	}
	for _, ref := range inc.Containers {
		var done []string
		for _, f := range []struct {
			on   bool
			name string
		}{{ref.Paused, "paused"}, {ref.Stopped, "stopped"}, {ref.Restarted, "restarted"}} {
			if f.on {
				done = append(done, f.name)
			}
		}
		status := ref.Status
		if status == "" {
			status = "no task"
		}
		line := fmt.Sprintf("  container %s/%s: was %s", ref.Namespace, ref.ID, status)
		if len(done) > 0 {
			line += ", " + strings.Join(done, ", ")
		}
		if ref.ManagedBy != "" && ref.Stopped && !ref.Restarted {
			line += "; its restart is left to " + ref.ManagedBy
		}
		if ref.Log != "" {
			line += "; output now in " + ref.Log
		}
		fmt.Fprintln(c.stdout, line)
	}
	if inc.Reason != "" {
		fmt.Fprintf(c.stdout, "  reason: %s\n", inc.Reason)
	}
	rows := [][]string{{"  AT", "STEP", "RESULT", "TOOK", "DETAIL"}}
	for _, s := range inc.Steps {
		took := "-"
		if d := s.Duration(); d > 0 {
			took = d.Round(100 * time.Microsecond).String()
		} else if s.End.IsZero() {
			took = "running"
		}
		rows = append(rows, []string{
			"  +" + s.Start.Sub(inc.DetectedAt).Round(100*time.Microsecond).String(),
			s.Name.String(), s.Result, took, s.Detail,
		})
	}
	c.table(rows)
	report := func(title string, r *imagefs.FsckResult) {
		if r == nil || r.Output == "" {
			return
		}
		fmt.Fprintf(c.stdout, "  %s (exit %d, %s):\n", title, r.ExitCode, r.Status())
		out := strings.Split(strings.TrimSpace(r.Output), "\n")
		if lines > 0 && len(out) > lines {
			fmt.Fprintf(c.stdout, "    ... %d lines (snug incidents %s shows them all)\n", len(out)-lines, inc.ID)
			out = out[len(out)-lines:]
		}
		for _, l := range out {
			fmt.Fprintf(c.stdout, "    %s\n", l)
		}
	}
	if inc.Check != nil {
		report("check, e2fsck -fn ("+inc.Check.Method+")", &inc.Check.FsckResult)
	}
	report("repair, e2fsck -f", inc.Repair)
	report("verify, e2fsck -fn", inc.Verify)
}
