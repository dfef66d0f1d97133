// Command raksha is Raksha's command-line interface: repositories, disk
// backups and restores, backup catalogs, prune, gc, verify and check.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
	"sync"
	"syscall"
	"time"

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
	// RAKSHA_TRACE=FILE writes an execution trace (go tool trace FILE: the
	// goroutines' blocking, syscalls and GC, for the gaps a CPU profile does
	// not show); RAKSHA_BLOCKPROFILE=FILE a blocking profile (every wait of
	// 1 µs or more) and RAKSHA_MEMPROFILE=FILE an allocation profile (one
	// sample per 64 KiB), written at exit. bench/profile.sh uses them all.
	stopProfiles := startProfiles(os.Getenv)
	defer stopProfiles()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp(os.Stdout, os.Stderr, os.Getenv)
	if err := app.root().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "raksha:", err)
		stopProfiles()
		os.Exit(exitCode(err))
	}
}

// startProfiles starts the profiles the environment asks for
// (RAKSHA_CPUPROFILE, RAKSHA_TRACE, RAKSHA_BLOCKPROFILE, RAKSHA_MEMPROFILE;
// see bench/PROFILE.md) and returns the function that stops and writes them
// (safe to call more than once). A profile that cannot be written is
// reported on stderr and skipped: it never fails the command.
func startProfiles(getenv func(string) string) func() {
	var stops []func()
	warn := func(what string, err error) { fmt.Fprintf(os.Stderr, "raksha: %s: %v\n", what, err) }
	if path := getenv("RAKSHA_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err != nil {
			warn("cpu profile", err)
		} else if err := pprof.StartCPUProfile(f); err != nil {
			warn("cpu profile", err)
			f.Close()
		} else {
			stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
		}
	}
	if path := getenv("RAKSHA_TRACE"); path != "" {
		if f, err := os.Create(path); err != nil {
			warn("trace", err)
		} else if err := trace.Start(f); err != nil {
			warn("trace", err)
			f.Close()
		} else {
			stops = append(stops, func() { trace.Stop(); f.Close() })
		}
	}
	if path := getenv("RAKSHA_BLOCKPROFILE"); path != "" {
		runtime.SetBlockProfileRate(int(time.Microsecond))
		stops = append(stops, func() { writeProfile("block", path, warn); runtime.SetBlockProfileRate(0) })
	}
	if path := getenv("RAKSHA_MEMPROFILE"); path != "" {
		runtime.MemProfileRate = 64 << 10
		stops = append(stops, func() { writeProfile("allocs", path, warn) })
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			for _, stop := range stops {
				stop()
			}
		})
	}
}

func writeProfile(name, path string, warn func(string, error)) {
	f, err := os.Create(path)
	if err != nil {
		warn(name+" profile", err)
		return
	}
	defer f.Close()
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		warn(name+" profile", err)
	}
}
