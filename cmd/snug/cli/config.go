package cli

import (
	"fmt"
	"os"

	"github.com/snugfs/snug/config"
)

// configCmd: snug config check [PATH]
func (c *CLI) configCmd(args []string) int {
	if len(args) == 0 || args[0] != "check" {
		return c.usageError("usage: snug config check [PATH]")
	}
	fs := c.flagSet("config check")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return exitUsage
	}
	path := c.configPath
	switch len(pos) {
	case 0:
	case 1:
		path = pos[0]
	default:
		return c.usageError("config check takes at most one path")
	}
	if _, err := config.Load(path); err != nil {
		return c.fail(err)
	}
	if _, err := os.Stat(path); err != nil {
		fmt.Fprintf(c.stdout, "%s: not found; snug uses its built-in defaults\n", path)
		return exitOK
	}
	fmt.Fprintf(c.stdout, "%s: ok\n", path)
	return exitOK
}
