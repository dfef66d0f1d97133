package watchdog

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
)

// Subcommand is the argument that makes a Raksha binary (raksha-worker, or
// the raksha CLI) run as a watchdog: "<binary> watchdog --dir DIR --parent
// PID" (Main parses the rest).
const Subcommand = "watchdog"

// Main runs a watchdog process from its command line (the arguments after
// Subcommand): --dir (required), --parent, --margin, --log (default
// DIR/watchdog.log, opened append-only, mode 0600). It ignores SIGINT, SIGHUP
// and SIGPIPE (a terminal's or a dead parent's signals must not end it) and
// ends on SIGTERM, or as Run does. It returns Run's error.
func Main(args []string) error {
	fs := flag.NewFlagSet(Subcommand, flag.ContinueOnError)
	dir := fs.String("dir", "", "directory of freeze records")
	parent := fs.Int("parent", 0, "pid of the process that freezes; the watchdog runs while it lives or records remain")
	logFile := fs.String("log", "", "log file (default DIR/watchdog.log)")
	margin := fs.Duration("margin", DefaultMargin, "how long after a freeze's deadline the watchdog thaws")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("watchdog: --dir is required")
	}
	if *logFile == "" {
		*logFile = filepath.Join(*dir, "watchdog.log")
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	lf, err := os.OpenFile(*logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("watchdog: log: %w", err)
	}
	defer lf.Close()
	log := slog.New(slog.NewTextHandler(lf, &slog.HandlerOptions{Level: slog.LevelInfo})).With("role", "watchdog")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP, syscall.SIGPIPE)
	err = Run(ctx, Options{Dir: *dir, ParentPID: *parent, Margin: *margin, Log: log})
	if err != nil {
		log.Error("watchdog failed", "err", err)
	}
	return err
}

// StartFor starts a watchdog for the freeze records in dir whose parent is
// this process: the running executable with Subcommand (so the binary must
// dispatch Subcommand to Main). The caller reaps it (exec.Cmd.Wait) or
// keeps it running with Supervise.
func StartFor(dir string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start watchdog: %w", err)
	}
	return Start(exe, Subcommand, "--dir", dir, "--parent", strconv.Itoa(os.Getpid()))
}
