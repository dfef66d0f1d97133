package guest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"
)

// Names of the files in an instance directory (DESIGN.md, "Sockets").
const (
	// AgentSocketName is the guest agent's socket.
	AgentSocketName = "qga.sock"
	// QMPSocketName is the QMP monitor socket reserved for Raksha.
	QMPSocketName = "qmp.sock"
	// LockName is the guest's lock file (LockPath of the agent socket).
	LockName = "qga.lock"
)

// HostDir returns <labDir>/hosts/<host>, the directory of one compute host.
func HostDir(labDir, host string) string { return filepath.Join(labDir, "hosts", host) }

// InstanceDir returns <hostDir>/instances/<instance>, the directory of one
// guest with its sockets and lock file.
func InstanceDir(hostDir, instance string) string {
	return filepath.Join(hostDir, "instances", instance)
}

// OrphanResult is what ThawOrphans did with one guest.
type OrphanResult struct {
	// Instance is the instance name; Socket its agent socket.
	Instance, Socket string
	// Skipped says why the guest was left alone: its lock is held by a live
	// owner, or its socket does not answer (no QEMU behind it). Empty when
	// the guest was checked.
	Skipped string
	// WasFrozen is true when the guest was found frozen (and so thawed).
	WasFrozen bool
	// Thawed is the number of filesystems the thaw reported.
	Thawed int
	// ThawAcked is when the thaw was acknowledged.
	ThawAcked time.Time
	// Err is the error that prevented checking or thawing, if any.
	Err error
}

// OrphanOptions configures ThawOrphans.
type OrphanOptions struct {
	// Logger receives what was found and done (slog.Default when nil).
	Logger *slog.Logger
	// PerGuestTimeout bounds the work on one guest (15 s when zero).
	PerGuestTimeout time.Duration
	// Parallel is how many guests are handled at once (4 when zero).
	Parallel int
}

// ThawOrphans thaws every guest below hostDir (instances/*/qga.sock) that is
// frozen without a live owner: it takes each guest's lock without waiting
// (a held lock means a live owner, which is skipped), connects, and thaws the
// guest if guest-fsfreeze-status says frozen. Run it when a host worker
// starts. Guests whose sockets do not answer are skipped (their QEMU is not
// running). It returns one result per guest, sorted by instance, and the
// errors of guests that could not be checked or thawed, joined.
func ThawOrphans(ctx context.Context, hostDir string, opts OrphanOptions) ([]OrphanResult, error) {
	socks, err := filepath.Glob(filepath.Join(hostDir, "instances", "*", AgentSocketName))
	if err != nil {
		return nil, fmt.Errorf("thaw orphans in %s: %w", hostDir, err)
	}
	sort.Strings(socks)
	guests := make([]OrphanGuest, len(socks))
	for i, sock := range socks {
		guests[i] = OrphanGuest{Instance: filepath.Base(filepath.Dir(sock)), Socket: sock, LockPath: LockPath(sock),
			Open: func(ctx context.Context, o Options) (*Client, error) { return Dial(ctx, sock, o) }}
	}
	return ThawOrphanGuests(ctx, guests, opts)
}

// OrphanGuest is one guest for ThawOrphanGuests.
type OrphanGuest struct {
	// Instance names the guest; Socket is its agent socket, if it has one.
	Instance, Socket string
	// LockPath is the guest's lock file (read for the owner of a held lock).
	LockPath string
	// Open opens a Client on the guest with the options given (it must
	// honour Options.NoWait, failing with ErrLocked).
	Open func(ctx context.Context, opts Options) (*Client, error)
}

// ThawOrphanGuests is ThawOrphans over any guests, whatever their
// transport (the agent sockets, or libvirt's domains on a compute node).
func ThawOrphanGuests(ctx context.Context, guests []OrphanGuest, opts OrphanOptions) ([]OrphanResult, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.PerGuestTimeout <= 0 {
		opts.PerGuestTimeout = 15 * time.Second
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	results := make([]OrphanResult, len(guests))
	sem := make(chan struct{}, opts.Parallel)
	var wg sync.WaitGroup
	for i, g := range guests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			gctx, cancel := context.WithTimeout(ctx, opts.PerGuestTimeout)
			defer cancel()
			results[i] = thawOrphan(gctx, g, log)
		}()
	}
	wg.Wait()
	var errs []error
	for _, r := range results {
		switch {
		case r.Err != nil:
			log.Error("orphan check failed", "instance", r.Instance, "err", r.Err)
			errs = append(errs, r.Err)
		case r.WasFrozen:
			log.Warn("thawed a guest left frozen without a live owner", "instance", r.Instance, "filesystems", r.Thawed)
		case r.Skipped != "":
			log.Info("orphan check skipped", "instance", r.Instance, "why", r.Skipped)
		}
	}
	return results, errors.Join(errs...)
}

func thawOrphan(ctx context.Context, g OrphanGuest, log *slog.Logger) OrphanResult {
	r := OrphanResult{Instance: g.Instance, Socket: g.Socket}
	c, err := g.Open(ctx, Options{Logger: log, NoWait: true, Owner: "thaw-orphans"})
	switch {
	case errors.Is(err, ErrLocked):
		r.Skipped = "locked by a live owner: " + readOwner(g.LockPath)
		return r
	case err != nil && isNoServer(err):
		r.Skipped = "socket does not answer (QEMU not running)"
		return r
	case err != nil && errors.Is(err, ErrNotAnswering) && g.Socket == "":
		r.Skipped = "agent does not answer"
		return r
	case err != nil:
		r.Err = fmt.Errorf("thaw orphans: %w", err)
		return r
	}
	defer c.Close()
	st, err := c.FsfreezeStatus(ctx)
	if err != nil {
		r.Err = fmt.Errorf("thaw orphans: %w", err)
		return r
	}
	if st != Frozen {
		return r
	}
	r.WasFrozen = true
	r.Thawed, err = c.FsfreezeThaw(ctx)
	if err != nil {
		r.Err = fmt.Errorf("thaw orphans: %w", err)
		return r
	}
	r.ThawAcked = time.Now()
	return r
}

// isNoServer reports a socket nobody listens on (stale file, QEMU gone).
func isNoServer(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED)
}
