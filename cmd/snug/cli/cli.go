// Package cli is the snug command line: one file per verb, output through
// the writers given to New so tests capture it.
package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/snugfs/snug/config"
	"github.com/snugfs/snug/imagefs"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // the operation failed, or a check found errors
	exitUsage = 2
)

// CLI runs snug commands.
type CLI struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	configPath     string
}

// New returns a CLI writing to stdout and stderr.
func New(stdout, stderr io.Writer) *CLI {
	return &CLI{stdin: os.Stdin, stdout: stdout, stderr: stderr, configPath: config.DefaultPath}
}

// WithStdin sets what commands read as standard input (`snug hook`).
func (c *CLI) WithStdin(r io.Reader) *CLI {
	c.stdin = r
	return c
}

const usage = `snug: thin ext4 images for containers

usage: snug [--config PATH] COMMAND [ARGS]   (--config may follow the command too)

commands:
  image create --size SIZE [--ceiling SIZE] [--window SIZE] PATH
                                                  make a thin image (ceiling: the most its quota can grow to)
  image inspect [--json] PATH...                  quota, window, used, footprint, swell, health
  image grow (--window SIZE | --free SIZE) PATH   grow the packing window
  image reclaim [--headroom SIZE] [--json] PATH   trim and repack: give space back to the host
  image shrink --size SIZE PATH                   lower the ceiling (and quota) of an unmounted image
  image check [--json] PATH                       e2fsck -fn an unmounted image
  image repair [--mode yes|preen] [--json] PATH   e2fsck to fix an unmounted image
  image mount [--ro] PATH DIR                     attach and mount an image
  image unmount PATH                              unmount it (its loop device goes too)
  serve [--log-level LEVEL]                       run the daemon: containerd's snapshotter plugin
  status [--json]                                 every image the daemon serves
  reclaim [--json] [SNAPSHOT]                     repack one snapshot's image now, or all
  resize --quota SIZE [--json] CONTAINER|SNAPSHOT change a running container's quota (up to its ceiling)
  incidents [--json] [ID]                         ext4 errors and what snug did: timeline, e2fsck reports
  check [--json] CONTAINER|SNAPSHOT               online e2fsck -fn of a running container's image
  hook createRuntime|prestart|poststop            the OCI hook (state on stdin)
  config check [PATH]                             validate a policy file
  version                                         print the version

SIZE is bytes or a number with a unit: 10GiB, 512MiB, 1.5G.
The runc wrapper that adds the hooks to each container is snug-runc, next
to snug-hook; $SNUG_RUNC names the real runc, $SNUG_CONTROL the control
socket if it is not the default.
The policy file (default /etc/snug/config.toml) gives the defaults.
`

// Run runs one command line and returns the process exit code.
func (c *CLI) Run(ctx context.Context, args []string) int {
	fs := c.flagSet("snug")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	args = fs.Args()
	if len(args) == 0 {
		fmt.Fprint(c.stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "image":
		return c.image(ctx, args[1:])
	case "config":
		return c.configCmd(args[1:])
	case "serve":
		return c.serve(ctx, args[1:])
	case "status":
		return c.status(ctx, args[1:])
	case "reclaim":
		return c.reclaim(ctx, args[1:])
	case "resize":
		return c.resize(ctx, args[1:])
	case "incidents":
		return c.incidents(ctx, args[1:])
	case "check":
		return c.check(ctx, args[1:])
	case "hook":
		return c.hook(ctx, args[1:])
	case "version", "--version":
		return c.version(args[1:])
	case "help", "-h", "--help":
		fmt.Fprint(c.stdout, usage)
		return exitOK
	}
	return c.usageError("unknown command %q", args[0])
}

func (c *CLI) usageError(format string, args ...any) int {
	fmt.Fprintf(c.stderr, "snug: "+format+"\n(see `snug help`)\n", args...)
	return exitUsage
}

// fail reports an error and returns the failure exit code.
func (c *CLI) fail(err error) int {
	fmt.Fprintf(c.stderr, "snug: %v\n", err)
	return exitFail
}

// flagSet is a command's flag set. Each knows the global --config too, so
// it goes before the command or after it (`snug serve --config FILE`, as
// containerd and the other snapshotter daemons take it).
func (c *CLI) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.StringVar(&c.configPath, "config", c.configPath, "policy file")
	return fs
}

// parse parses flags that may come before, between or after the positional
// arguments (`snug image inspect PATH --json`) and returns the positionals.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// policy loads the policy file, reporting a bad one.
func (c *CLI) policy() (config.Config, error) {
	cfg, err := config.Load(c.configPath)
	if err != nil {
		return cfg, fmt.Errorf("policy: %w", err)
	}
	imagefs.UseTools(cfg.E2fsprogsDir)
	return cfg, nil
}

func (c *CLI) writeJSON(v any) int {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return c.fail(err)
	}
	return exitOK
}

// table writes rows of cells aligned in columns.
func (c *CLI) table(rows [][]string) {
	widths := map[int]int{}
	for _, r := range rows {
		for i, cell := range r {
			widths[i] = max(widths[i], len(cell))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, cell := range r {
			if i == len(r)-1 {
				b.WriteString(cell)
				break
			}
			fmt.Fprintf(&b, "%-*s  ", widths[i], cell)
		}
		fmt.Fprintln(c.stdout, strings.TrimRight(b.String(), " "))
	}
}

// sizeFlag is a config.Size flag that knows whether it was set.
type sizeFlag struct {
	v   config.Size
	set bool
}

func (s *sizeFlag) String() string {
	if !s.set {
		return ""
	}
	return s.v.String()
}
func (s *sizeFlag) Set(v string) error {
	s.set = true
	return s.v.Set(v)
}
