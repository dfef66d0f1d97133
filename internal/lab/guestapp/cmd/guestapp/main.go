// Command guestapp is the lab guests' application (package guestapp): a
// record writer and a checker. scripts/build-guest.sh builds it statically
// (CGO_ENABLED=0) into the guest's initramfs as /bin/guestapp, and the guest's
// /init starts `guestapp write` on every disk mounted at /data/<label> (unless
// the kernel command line says raksha.writer=0).
//
//	guestapp write [-interval 50ms] [-count N] [-root /data] [-ready FILE] [DIR...]
//	    append records to DIR/raksha-writer/<run>.rec on every DIR (default:
//	    every mount point directly below -root) until killed; create FILE
//	    once the first record of every disk is durable
//	guestapp stamp
//	    print the wall-clock time (RFC 3339, nanoseconds) and the boot clock
//	    (seconds since boot): the lab's fsfreeze hooks log these
//	guestapp check [-json] [-gap 0] PATH...
//	    check record files (a PATH may be a file, a disk's mount point or its
//	    raksha-writer directory); exit 0 when all are intact, 1 when one is
//	    torn or misses records, 2 on a usage or read error
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/raksha-backup/raksha/internal/lab/guestapp"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: guestapp write|check|stamp [flags] [PATH...]")
		return 2
	}
	switch args[0] {
	case "write":
		return write(args[1:], stderr)
	case "check":
		return check(args[1:], stdout, stderr)
	case "stamp":
		fmt.Fprintf(stdout, "wall=%s boot=%.6fs\n", time.Now().UTC().Format(time.RFC3339Nano), guestapp.BootTime().Seconds())
		return 0
	default:
		fmt.Fprintf(stderr, "guestapp: unknown command %q (want write, check or stamp)\n", args[0])
		return 2
	}
}

func write(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("guestapp write", flag.ContinueOnError)
	fs.SetOutput(stderr)
	interval := fs.Duration("interval", guestapp.DefaultInterval, "pause after each record")
	count := fs.Uint64("count", 0, "stop after this many records per disk (0: never)")
	root := fs.String("root", "/data", "write on every mount point directly below this directory when no DIR is given")
	ready := fs.String("ready", "", "create this file once every disk's first record is durable")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("prog", "guestapp")
	dirs := fs.Args()
	if len(dirs) == 0 {
		var err error
		dirs, err = guestapp.MountedDirs("/proc/self/mounts", *root)
		if err != nil {
			log.Error("guestapp write", "err", err)
			return 2
		}
		if len(dirs) == 0 {
			log.Error("guestapp write: no mount point below " + *root)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	opts := guestapp.WriterOptions{Dirs: dirs, Interval: *interval, Count: *count, Logger: log}
	if *ready != "" {
		opts.Ready = func() {
			if err := os.WriteFile(*ready, []byte("ready\n"), 0o644); err != nil {
				log.Error("guestapp write: ready file", "err", err)
			}
			log.Info("record writer ready: first record durable on every disk", "disks", len(dirs))
		}
	}
	if err := guestapp.RunWriter(ctx, opts); err != nil {
		log.Error("guestapp write", "err", err)
		return 2
	}
	return 0
}

func check(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("guestapp check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the reports as a JSON array")
	gap := fs.Duration("gap", 0, "list stalls between records longer than this (0: none)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "guestapp check: name at least one record file or directory")
		return 2
	}
	opts := guestapp.CheckOptions{GapThreshold: *gap}
	var reps []*guestapp.Report
	for _, p := range fs.Args() {
		fi, err := os.Stat(p)
		if err != nil {
			fmt.Fprintf(stderr, "guestapp check: %v\n", err)
			return 2
		}
		if fi.IsDir() {
			rs, err := guestapp.CheckDir(p, opts)
			if err != nil {
				fmt.Fprintf(stderr, "guestapp check: %v\n", err)
				return 2
			}
			reps = append(reps, rs...)
			continue
		}
		r, err := guestapp.CheckFile(p, opts)
		if err != nil {
			fmt.Fprintf(stderr, "guestapp check: %v\n", err)
			return 2
		}
		reps = append(reps, r)
	}
	code := 0
	for _, r := range reps {
		if !r.OK() {
			code = 1
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", " ")
		if err := enc.Encode(reps); err != nil {
			fmt.Fprintf(stderr, "guestapp check: %v\n", err)
			return 2
		}
		return code
	}
	for _, r := range reps {
		status := "OK"
		if !r.OK() {
			status = "DAMAGED"
		}
		fmt.Fprintf(stdout, "%s %s\n", status, r)
		for _, t := range r.Torn {
			fmt.Fprintf(stdout, "  torn record %d at offset %d: %s\n", t.Index, t.Offset, t.Reason)
		}
		for _, m := range r.Missing {
			fmt.Fprintf(stdout, "  missing seq %d..%d\n", m.From, m.To)
		}
		for _, g := range r.Gaps {
			fmt.Fprintf(stdout, "  gap %v after seq %d (%s .. %s)\n", g.Duration.Round(time.Millisecond), g.AfterSeq,
				g.From.UTC().Format(time.RFC3339Nano), g.To.UTC().Format(time.RFC3339Nano))
		}
	}
	return code
}
