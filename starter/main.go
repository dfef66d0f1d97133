// Command raksha is Raksha's command-line interface: repositories, disk
// backups and restores, backup catalogs, prune, gc, verify and check.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
)

// memoryLimit is the Go heap's soft limit unless GOMEMLIMIT says otherwise:
// the pipelines hold at most a few dozen chunks, and a limit makes the garbage
// collector return buffers before the process grows past it.
const memoryLimit = 160 << 20

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	// RAKSHA_CPUPROFILE=FILE writes a CPU profile of the command (for
	// performance work: go tool pprof FILE).
	if path := os.Getenv("RAKSHA_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			if err := pprof.StartCPUProfile(f); err == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp(os.Stdout, os.Stderr, os.Getenv)
	if err := app.root().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "raksha:", err)
		pprof.StopCPUProfile()
		os.Exit(exitCode(err))
	}
}
