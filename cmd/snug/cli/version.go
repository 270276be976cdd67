package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is set at build time: -ldflags "-X github.com/snugfs/snug/cmd/snug/cli.Version=v0.1.0".
var Version = "dev"

func (c *CLI) version(args []string) int {
	args, err := parse(c.flagSet("version"), args)
	if err != nil {
		return exitUsage
	}
	if len(args) > 0 {
		return c.usageError("version takes no arguments")
	}
	rev := ""
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				rev = " (" + s.Value[:12] + ")"
			}
		}
	}
	fmt.Fprintf(c.stdout, "snug %s%s %s/%s %s\n", Version, rev, runtime.GOOS, runtime.GOARCH, runtime.Version())
	return exitOK
}
