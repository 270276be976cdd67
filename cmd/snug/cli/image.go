package cli

import (
	"context"
	"flag"
	"fmt"
	"strconv"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

func (c *CLI) image(ctx context.Context, args []string) int {
	if len(args) == 0 {
		return c.usageError("usage: snug image create|inspect|grow|reclaim|shrink|check|repair|mount|unmount ...")
	}
	cmds := map[string]func(context.Context, []string) int{
		"create": c.imageCreate, "inspect": c.imageInspect, "grow": c.imageGrow,
		"reclaim": c.imageReclaim, "shrink": c.imageShrink, "check": c.imageCheck, "repair": c.imageRepair,
		"mount": c.imageMount, "unmount": c.imageUnmount,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		return c.usageError("unknown image command %q", args[0])
	}
	return cmd(ctx, args[1:])
}

// onePath parses flags and expects exactly one positional path.
func (c *CLI) onePath(name string, fs *flag.FlagSet, args []string) (string, int) {
	pos, err := parse(fs, args)
	if err != nil {
		return "", exitUsage
	}
	if len(pos) != 1 {
		return "", c.usageError("%s takes one image path, got %d", name, len(pos))
	}
	return pos[0], exitOK
}

func (c *CLI) imageCreate(ctx context.Context, args []string) int {
	fs := c.flagSet("image create")
	var size, ceiling, window sizeFlag
	fs.Var(&size, "size", "quota: the most its container can store (default: image.quota of the policy)")
	fs.Var(&ceiling, "ceiling", "the filesystem's size: the most the quota can be raised to online (default: image.max_quota, or the quota)")
	fs.Var(&window, "window", "initial packing window (default: window.initial)")
	path, code := c.onePath("image create", fs, args)
	if code != exitOK {
		return code
	}
	cfg, err := c.policy()
	if err != nil {
		return c.fail(err)
	}
	o := imagefs.CreateOptions{
		Quota: cfg.Image.Quota.Bytes(), Ceiling: cfg.Image.MaxQuota.Bytes(), Window: cfg.Window.Initial.Bytes(),
		JournalSize: cfg.Image.JournalSize.Bytes(), BytesPerInode: cfg.Image.BytesPerInode.Bytes(),
		DirectIO: cfg.Image.DirectIO, FastCommit: cfg.Image.FastCommit,
	}
	if size.set {
		o.Quota = size.v.Bytes()
	}
	if window.set {
		o.Window = window.v.Bytes()
	}
	if ceiling.set {
		o.Ceiling = ceiling.v.Bytes()
	}
	if err := imagefs.Create(ctx, path, o); err != nil {
		return c.fail(err)
	}
	st, err := imagefs.Stat(ctx, path)
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.stdout, "created %s: quota %s, ceiling %s, window %s, footprint %s\n", path, config.FormatBytes(st.QuotaBytes),
		config.FormatBytes(st.CeilingBytes), config.FormatBytes(st.WindowBytes), config.FormatBytes(st.FootprintBytes))
	return exitOK
}

func (c *CLI) imageInspect(ctx context.Context, args []string) int {
	fs := c.flagSet("image inspect")
	asJSON := fs.Bool("json", false, "print one JSON object per image")
	paths, err := parse(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(paths) == 0 {
		return c.usageError("image inspect takes one or more image paths")
	}
	code := exitOK
	var all []imagefs.Stats
	for _, p := range paths {
		st, err := imagefs.Stat(ctx, p)
		if err != nil {
			c.fail(err)
			code = exitFail
			continue
		}
		all = append(all, st)
	}
	if *asJSON {
		for _, st := range all {
			if c.writeJSON(st) != exitOK {
				return exitFail
			}
		}
		return code
	}
	if len(all) == 0 {
		return code
	}
	rows := [][]string{{"IMAGE", "QUOTA", "WINDOW", "USED", "FREE", "FOOTPRINT", "SWELL", "INODES", "HEALTH", "MOUNTED"}}
	for _, st := range all {
		mounted := "-"
		if st.Mounted {
			mounted = st.Mountpoint
		}
		rows = append(rows, []string{
			st.Path, size(st.QuotaBytes), size(st.WindowBytes), size(st.UsedBytes), size(st.FreeBytes),
			size(st.FootprintBytes), swell(st), fmt.Sprintf("%d/%d", st.InodesUsed, st.InodesTotal),
			health(st), mounted,
		})
	}
	c.table(rows)
	return code
}

func size(n int64) string {
	if n < 0 {
		return "?"
	}
	return config.FormatBytes(n)
}

func swell(st imagefs.Stats) string {
	if st.UsedBytes <= 0 {
		return "-"
	}
	return strconv.FormatFloat(st.Swell, 'f', 2, 64) + "x"
}

func health(st imagefs.Stats) string {
	if st.Errors > 0 {
		return fmt.Sprintf("%s (%d)", st.Health, st.Errors)
	}
	return st.Health
}

func (c *CLI) imageGrow(ctx context.Context, args []string) int {
	fs := c.flagSet("image grow")
	var window, free sizeFlag
	fs.Var(&window, "window", "move the window's end to at least SIZE")
	fs.Var(&free, "free", "make sure SIZE is free inside the window")
	path, code := c.onePath("image grow", fs, args)
	if code != exitOK {
		return code
	}
	if window.set == free.set {
		return c.usageError("image grow needs exactly one of --window or --free")
	}
	cfg, err := c.policy()
	if err != nil {
		return c.fail(err)
	}
	err = imagefs.WithMount(ctx, path, mountOptions(cfg), func(m *imagefs.Mounted) error {
		if window.set {
			_, err := m.Grow(ctx, window.v.Bytes())
			return err
		}
		_, err := m.EnsureFree(ctx, free.v.Bytes())
		return err
	})
	if err != nil {
		return c.fail(err)
	}
	return c.imageInspect(ctx, []string{path})
}

func (c *CLI) imageReclaim(ctx context.Context, args []string) int {
	fs := c.flagSet("image reclaim")
	var headroom sizeFlag
	fs.Var(&headroom, "headroom", "free space to leave in the window (default: window.headroom)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	path, code := c.onePath("image reclaim", fs, args)
	if code != exitOK {
		return code
	}
	cfg, err := c.policy()
	if err != nil {
		return c.fail(err)
	}
	h := cfg.Window.Headroom.Bytes()
	if headroom.set {
		h = headroom.v.Bytes()
	}
	var res imagefs.ReclaimResult
	err = imagefs.WithMount(ctx, path, mountOptions(cfg), func(m *imagefs.Mounted) (err error) {
		res, err = m.Reclaim(ctx, imagefs.ReclaimOptions{Headroom: h})
		return err
	})
	if err != nil {
		return c.fail(err)
	}
	if *asJSON {
		return c.writeJSON(res)
	}
	fmt.Fprintf(c.stdout, "reclaimed %s: footprint %s -> %s, window %s -> %s, trimmed %s in %v\n", path,
		size(res.FootprintBefore), size(res.FootprintAfter), size(res.WindowBefore), size(res.WindowAfter),
		size(res.TrimmedBytes), res.Duration.Round(1e6))
	return exitOK
}

func (c *CLI) imageShrink(ctx context.Context, args []string) int {
	fs := c.flagSet("image shrink")
	var quota sizeFlag
	fs.Var(&quota, "size", "the new quota")
	path, code := c.onePath("image shrink", fs, args)
	if code != exitOK {
		return code
	}
	if !quota.set {
		return c.usageError("image shrink needs --size")
	}
	cfg, err := c.policy()
	if err != nil {
		return c.fail(err)
	}
	if err := imagefs.Shrink(ctx, path, quota.v.Bytes(), cfg.Image.DirectIO); err != nil {
		return c.fail(err)
	}
	return c.imageInspect(ctx, []string{path})
}

func (c *CLI) imageCheck(ctx context.Context, args []string) int {
	fs := c.flagSet("image check")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	path, code := c.onePath("image check", fs, args)
	if code != exitOK {
		return code
	}
	res, err := imagefs.Check(ctx, path)
	return c.fsckReport(path, res, err, *asJSON)
}

func (c *CLI) imageRepair(ctx context.Context, args []string) int {
	fs := c.flagSet("image repair")
	mode := fs.String("mode", "", "yes (e2fsck -fy) or preen (e2fsck -fp); default: fsck.repair")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	path, code := c.onePath("image repair", fs, args)
	if code != exitOK {
		return code
	}
	cfg, err := c.policy()
	if err != nil {
		return c.fail(err)
	}
	m := imagefs.RepairMode(cfg.Fsck.Repair)
	if *mode != "" {
		m = imagefs.RepairMode(*mode)
	}
	if m != imagefs.RepairYes && m != imagefs.RepairPreen {
		return c.usageError("--mode must be yes or preen")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Fsck.Timeout)
	defer cancel()
	res, err := imagefs.Repair(ctx, path, m)
	return c.fsckReport(path, res, err, *asJSON)
}

// fsckReport prints e2fsck's findings, then a one-line summary, and exits
// non-zero unless the image is clean or was repaired.
func (c *CLI) fsckReport(path string, res imagefs.FsckResult, err error, asJSON bool) int {
	if err != nil && res.ExitCode == 0 {
		return c.fail(err)
	}
	if asJSON {
		c.writeJSON(struct {
			imagefs.FsckResult
			Status string `json:"status"`
		}{res, res.Status()})
	} else {
		if res.Output != "" {
			fmt.Fprintln(c.stdout, res.Output)
		}
		fmt.Fprintf(c.stdout, "%s: %s (e2fsck exit %d, %v)\n", path, res.Status(), res.ExitCode, res.Duration.Round(1e6))
	}
	if err != nil || res.Uncorrected() {
		if err != nil {
			c.fail(err)
		}
		return exitFail
	}
	return exitOK
}
