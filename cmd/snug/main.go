// Command snug is snug's main binary: the daemon (`snug serve`), its
// status, the OCI hooks, and the image tools (see `snug help`). The runc
// wrapper and a faster-starting hook are cmd/snug-hook.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/snugfs/snug/cmd/snug/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.New(os.Stdout, os.Stderr).Run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
