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

	"github.com/raksha-backup/raksha/internal/watchdog"
)

// memoryLimit is the Go heap's soft limit unless GOMEMLIMIT says otherwise:
// the pipelines hold at most a few dozen chunks, and a limit makes the garbage
// collector return buffers before the process grows past it.
const memoryLimit = 160 << 20

func main() {
	// "raksha watchdog --dir DIR --parent PID" is the freeze watchdog a
	// libvirt disk backup starts (package watchdog); not a user command.
	if len(os.Args) > 1 && os.Args[1] == watchdog.Subcommand {
		if err := watchdog.Main(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "raksha watchdog:", err)
			os.Exit(1)
		}
		return
	}
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
