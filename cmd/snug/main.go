// Command snug is snug's one binary: the daemon (`snug serve`), its status,
// the OCI hooks, and the image tools (see `snug help`); run through a
// symlink named snug-runc, it is the runc wrapper that adds the hooks.
package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/snugfs/snug/cmd/snug/cli"
	"github.com/snugfs/snug/hooks"
)

func main() {
	if filepath.Base(os.Args[0]) == hooks.WrapperName {
		os.Exit(cli.New(os.Stdout, os.Stderr).RuncWrapper(os.Args[1:]))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.New(os.Stdout, os.Stderr).Run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
