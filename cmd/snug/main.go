// Command snug is snug's one binary: the daemon (`snug serve`), its status,
// and the image tools. See `snug help`.
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
