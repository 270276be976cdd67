package cli

import (
	"context"
	"fmt"

	"github.com/snugfs/snug/imagefs"
)

// imageMount: snug image mount [--ro] PATH DIR
func (c *CLI) imageMount(ctx context.Context, args []string) int {
	fs := c.flagSet("image mount")
	ro := fs.Bool("ro", false, "mount read-only")
	pos, err := parse(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) != 2 {
		return c.usageError("usage: snug image mount [--ro] PATH DIR")
	}
	cfg, err := c.policy()
	if err != nil {
		return c.fail(err)
	}
	o := mountOptions(cfg)
	o.ReadOnly = *ro
	m, err := imagefs.Mount(ctx, pos[0], pos[1], o)
	if err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.stdout, "mounted %s (%s) on %s\n", m.Image, m.Device, m.Dir)
	return exitOK
}

// imageUnmount: snug image unmount PATH
func (c *CLI) imageUnmount(ctx context.Context, args []string) int {
	fs := c.flagSet("image unmount")
	path, code := c.onePath("image unmount", fs, args)
	if code != exitOK {
		return code
	}
	m, err := imagefs.FindMount(path)
	if err != nil {
		return c.fail(err)
	}
	if err := m.Unmount(ctx); err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(c.stdout, "unmounted %s from %s\n", m.Image, m.Dir)
	return exitOK
}
