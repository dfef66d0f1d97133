// Command raksha is Raksha's command-line interface: repositories, disk
// backups and restores, backup catalogs, prune, gc, verify and check.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp(os.Stdout, os.Stderr, os.Getenv)
	if err := app.root().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "raksha:", err)
		os.Exit(exitCode(err))
	}
}
