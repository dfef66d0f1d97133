package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/open"
)

// app holds what every command shares: output streams, environment and the
// global flags. Tests build one with their own streams and environment.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string

	repoURL      string
	passwordFile string
	s3Endpoint   string
	s3PathStyle  bool
	format       string
	logLevel     string
	progress     string
	osCloud      string   // --os-cloud: through raksha-api (cmd_api.go)
	apiURL       string   // --api-url: raksha-api's URL instead of the catalog's
	columns      []string // -c: the columns or fields to print (through raksha-api)
	log          *slog.Logger
	started      time.Time // when the command started, for phase timings
}

func newApp(stdout, stderr io.Writer, getenv func(string) string) *app {
	return &app{stdout: stdout, stderr: stderr, getenv: getenv, started: time.Now()}
}

// phase logs at debug level how long the command has run when it reaches a
// step (--log-level debug shows where the time of a command goes).
func (a *app) phase(step string, args ...any) {
	a.log.Debug(step, append([]any{"elapsed", time.Since(a.started).Round(10 * time.Microsecond)}, args...)...)
}

// errUsage marks errors in the command line (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func exitCode(err error) int {
	var u usageError
	switch {
	case errors.As(err, &u):
		return 2
	case errors.Is(err, repo.ErrVerifyFailed), errors.Is(err, repo.ErrCheckFailed):
		return 3
	default:
		return 1
	}
}

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:           "raksha",
		Short:         "Application-consistent, incremental backups of OpenStack workloads",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(a.logLevel)); err != nil {
				return usagef("--log-level %q: use debug, info, warn or error", a.logLevel)
			}
			a.log = slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: lvl}))
			if err := checkFormat(a.format); err != nil {
				return err
			}
			if viaAPI := cmd.Annotations[apiAnnotation] != "" && a.apiMode(cmd); !viaAPI {
				if a.format != "table" && a.format != "json" {
					return usagef("-f %s: only through raksha-api (--os-cloud); this command prints table or json", a.format)
				}
				if len(a.columns) > 0 {
					return usagef("-c: only through raksha-api (--os-cloud)")
				}
				if cmd.Flags().Changed("os-cloud") || cmd.Flags().Changed("api-url") {
					return usagef("raksha %s is not offered through raksha-api: it needs --repo or --temporal (an operator's)", cmd.CommandPath()[len("raksha "):])
				}
			}
			if a.repoURL == "" {
				a.repoURL = a.getenv("RAKSHA_REPO")
			}
			if a.s3Endpoint == "" {
				a.s3Endpoint = a.getenv("RAKSHA_S3_ENDPOINT")
			}
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.repoURL, "repo", "", "repository URL: file:///path, s3://bucket/prefix, swift://container/prefix (env RAKSHA_REPO)")
	pf.StringVar(&a.passwordFile, "password-file", "", "read the repository password from this file (default: env RAKSHA_PASSWORD)")
	pf.StringVar(&a.s3Endpoint, "s3-endpoint", "", "S3 endpoint for Ceph RGW or MinIO, e.g. http://127.0.0.1:7480 (env RAKSHA_S3_ENDPOINT)")
	pf.BoolVar(&a.s3PathStyle, "s3-path-style", true, "path-style S3 addressing (needed by RGW and MinIO)")
	pf.StringVarP(&a.format, "format", "f", "table", "output format: table or json; through raksha-api also yaml or value")
	pf.StringArrayVarP(&a.columns, "column", "c", nil, "through raksha-api: print only this column or field (repeatable)")
	pf.StringVar(&a.osCloud, "os-cloud", "", "go through raksha-api as this clouds.yaml entry's user (env OS_CLOUD; see 'raksha help' for when it applies)")
	pf.StringVar(&a.apiURL, "api-url", "", "raksha-api's URL, instead of the Keystone catalog's data-protection endpoint (env RAKSHA_API_URL)")
	pf.StringVar(&a.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	pf.StringVar(&a.progress, "progress", "auto", "progress display: auto (bar on a terminal, lines otherwise), bar, lines, none")

	root.AddCommand(a.repoCmd(), a.diskCmd(), a.backupCmd(), a.temporalSetupCmd())
	root.AddCommand(a.labCmd())
	root.AddCommand(a.policyCmd())
	root.AddCommand(a.restoreCmd(), a.cloneCmd())
	root.AddCommand(a.mountCmd(), a.umountCmd())
	root.AddCommand(a.workloadCmd(), a.quotaCmd())
	return root
}

func (a *app) password() (string, error) {
	if a.passwordFile != "" {
		data, err := os.ReadFile(a.passwordFile)
		if err != nil {
			return "", fmt.Errorf("--password-file: %w", err)
		}
		return strings.TrimRight(string(data), "\r\n"), nil
	}
	return a.getenv("RAKSHA_PASSWORD"), nil
}

// openBackend opens the backend named by --repo.
func (a *app) openBackend(ctx context.Context) (backend.Backend, error) {
	if a.repoURL == "" {
		return nil, usagef("no repository: give --repo URL or set RAKSHA_REPO")
	}
	return open.Open(ctx, a.repoURL, open.Options{S3Endpoint: a.s3Endpoint, S3PathStyle: a.s3PathStyle, Log: a.log})
}

// openRepo opens the repository named by --repo.
func (a *app) openRepo(ctx context.Context) (*repo.Repository, error) {
	be, err := a.openBackend(ctx)
	if err != nil {
		return nil, err
	}
	pw, err := a.password()
	if err != nil {
		return nil, err
	}
	r, err := repo.Open(ctx, be, pw, repo.Options{Log: a.log})
	if err != nil {
		return nil, err
	}
	// The key derivation's 46 MiB are garbage now: collect them, so that
	// the command's buffers (a backup's or a restore's chunks, about as
	// much) reuse those pages instead of faulting in fresh memory, which is
	// slow on virtual machines that hand freed memory back to the host
	// (bench/PROFILE.md, "Third round").
	runtime.GC()
	return r, nil
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// parseSize parses sizes such as 4MiB, 512KiB, 1G or 65536.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	units := []struct {
		suffix string
		m      int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1}}
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.m
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (KiB, MiB, GiB)", s)
	}
	return n * mult, nil
}

// parseLabels parses k=v pairs.
func parseLabels(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, usagef("--label %q: want key=value", p)
		}
		out[k] = v
	}
	return out, nil
}

// parseExpiry accepts an RFC 3339 time, a date (2026-12-31) or a duration
// from now (720h, 30d).
func parseExpiry(s string, now time.Time) (*time.Time, error) {
	if s == "" {
		return nil, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return &t, nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return &t, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(d); err == nil && n > 0 {
			t := now.AddDate(0, 0, n)
			return &t, nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		t := now.Add(d)
		return &t, nil
	}
	return nil, usagef("--expires %q: want a date (2026-12-31), an RFC 3339 time, or a duration (720h, 30d)", s)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
