// Package watchdog thaws guests whose freezer died: it is the backstop
// outside the host worker's process for the freeze guard inside it
// (DESIGN.md, "Freeze ownership"). The host worker records every freeze in a
// directory of freeze records (package freezerec) before sending it and
// removes the record after a confirmed thaw; the watchdog, a process of its
// own session that a SIGKILL of the worker (or of its process group) does
// not reach, watches that directory and thaws each guest whose record is
// still there at its deadline plus a margin, through the record's route
// (the agent socket, or libvirt's agent pass-through) and under the guest's
// lock, then removes the record. A guest whose lock a live process holds is
// left to that process (its guard thaws at the deadline); a record that a
// newer freeze of the guest replaced is never acted on.
//
// One watchdog serves a directory at a time (an flock on .watchdog.lock);
// another one started for it waits for the lock while its parent lives. A
// watchdog runs while its parent (the host worker) lives or records remain.
package watchdog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raksha-backup/raksha/internal/freezerec"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
)

// Defaults of Options.
const (
	DefaultMargin = time.Second
	DefaultPoll   = 250 * time.Millisecond
)

// LockName is the watchdog's lock file in the records' directory.
const LockName = ".watchdog.lock"

// Options configure Run.
type Options struct {
	// Dir is the directory of freeze records.
	Dir string
	// Margin is how long after a record's deadline the watchdog thaws
	// (DefaultMargin when zero): the freezer's own guard goes first.
	Margin time.Duration
	// Poll is how often the directory is read (DefaultPoll when zero).
	Poll time.Duration
	// ParentPID is the process whose life keeps the watchdog running (the
	// host worker); 0: none, the watchdog ends once no record remains.
	ParentPID int
	// Log receives what the watchdog finds and does (slog.Default when nil).
	Log *slog.Logger
}

// Thawed is what the watchdog did with one record, for logs and tests.
type Thawed struct {
	Record freezerec.Record
	// WasFrozen says the guest was found frozen (and was thawed).
	WasFrozen bool
	// ThawAcked is when the agent acknowledged the thaw; Late is
	// ThawAcked - Record.Deadline; Took is how long the attempt took (the
	// guest's lock, connecting, status and thaw).
	ThawAcked time.Time
	Late      time.Duration
	Took      time.Duration
}

type watchdog struct {
	opts  Options
	log   *slog.Logger
	dir   *freezerec.Dir
	conns map[string]*libvirt.Conn // libvirt URI → connection
	next  map[string]time.Time     // key → earliest next attempt
	child bool                     // ParentPID was the parent at start
}

// Run serves opts.Dir until its parent is gone and no record remains, or
// ctx ends. It returns nil then; an error when the directory or its lock
// cannot be used.
func Run(ctx context.Context, opts Options) error {
	if opts.Margin <= 0 {
		opts.Margin = DefaultMargin
	}
	if opts.Poll <= 0 {
		opts.Poll = DefaultPoll
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	dir, err := freezerec.Open(opts.Dir)
	if err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	w := &watchdog{opts: opts, log: opts.Log.With("freezes", opts.Dir), dir: dir,
		conns: map[string]*libvirt.Conn{}, next: map[string]time.Time{},
		child: opts.ParentPID != 0 && os.Getppid() == opts.ParentPID}
	defer w.closeConns()

	lock, err := w.lock(ctx)
	if err != nil || lock == nil {
		return err
	}
	defer lock.Close()
	w.log.Info("watchdog serving", "pid", os.Getpid(), "parent", opts.ParentPID, "margin", opts.Margin)
	t := time.NewTicker(opts.Poll)
	defer t.Stop()
	for {
		n := w.sweep(ctx)
		if n == 0 && !w.parentAlive() {
			w.log.Info("watchdog done: its parent is gone and no freeze record remains")
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// lock takes the directory's watchdog lock, waiting while another watchdog
// holds it and the parent lives; nil (and no error) when the wait ends
// because the parent is gone (the other watchdog serves the records).
func (w *watchdog) lock(ctx context.Context) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(w.opts.Dir, LockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("watchdog: lock: %w", err)
	}
	waiting := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			_ = f.Truncate(0)
			_, _ = fmt.Fprintf(f, "%d\n", os.Getpid())
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("watchdog: lock: %w", err)
		}
		if !waiting {
			w.log.Info("another watchdog serves the directory; waiting for it to end")
			waiting = true
		}
		if !w.parentAlive() {
			f.Close()
			return nil, nil
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, nil
		case <-time.After(w.opts.Poll):
		}
	}
}

// parentAlive reports whether the process that keeps the watchdog running
// lives: the parent it was started by (a SIGKILLed parent's children are
// re-parented, so a reused pid does not count), or any process of that pid.
func (w *watchdog) parentAlive() bool {
	switch {
	case w.opts.ParentPID == 0:
		return false
	case w.child:
		return os.Getppid() == w.opts.ParentPID
	}
	return syscall.Kill(w.opts.ParentPID, 0) == nil
}

// sweep acts on every record that is due and returns how many records
// remain.
func (w *watchdog) sweep(ctx context.Context) int {
	keys, err := w.dir.Keys()
	if errors.Is(err, os.ErrNotExist) {
		// The directory is gone (removed with its freezer's work
		// directory): no record can be left in it.
		return 0
	}
	if err != nil {
		w.log.Error("reading the freeze records failed", "err", err)
		return 1 // keep running: records may be there
	}
	now := time.Now()
	remain := 0
	for _, key := range keys {
		rec, err := w.dir.Read(key)
		if errors.Is(err, os.ErrNotExist) {
			continue // removed meanwhile
		}
		remain++
		if err != nil {
			w.log.Error("unreadable freeze record", "key", key, "err", err)
			continue
		}
		if !rec.Due(now, w.opts.Margin) || now.Before(w.next[key]) {
			continue
		}
		res, retry, err := w.thaw(ctx, key, *rec)
		switch {
		case err != nil:
			w.log.Error("watchdog: thaw failed; retrying", "instance", rec.Route.Instance, "freeze", rec.ID, "owner", rec.Owner, "err", err)
			w.next[key] = time.Now().Add(retry)
		case retry > 0:
			w.next[key] = time.Now().Add(retry)
		default:
			delete(w.next, key)
			remain--
			if res != nil && res.WasFrozen {
				w.log.Warn("watchdog thawed a guest its freezer left frozen past the deadline", "instance", rec.Route.Instance,
					"freeze", rec.ID, "owner", rec.Owner, "owner_pid", rec.PID, "deadline", rec.Deadline,
					"thaw_acked", res.ThawAcked, "late", res.Late, "took", res.Took)
			}
		}
	}
	return remain
}

// thaw thaws the guest of rec under its lock if rec is still the guest's
// record, and removes the record. retry > 0 asks for another attempt after
// it (the lock is held by a live owner, or the attempt failed).
func (w *watchdog) thaw(ctx context.Context, key string, rec freezerec.Record) (*Thawed, time.Duration, error) {
	start := time.Now()
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := w.open(octx, rec.Route)
	switch {
	case errors.Is(err, guest.ErrLocked):
		w.log.Info("freeze past its deadline, but its guest is locked by a live owner; leaving it to that owner's guard",
			"instance", rec.Route.Instance, "freeze", rec.ID, "err", err)
		return nil, 2 * time.Second, nil
	case err != nil && gone(err):
		if _, rerr := w.dir.Remove(key, rec.ID); rerr != nil {
			return nil, 2 * time.Second, rerr
		}
		w.log.Warn("freeze record of a guest that is gone (not running): removed", "instance", rec.Route.Instance, "freeze", rec.ID, "err", err)
		return nil, 0, nil
	case err != nil:
		return nil, 2 * time.Second, err
	}
	defer c.Close()
	// Under the guest's lock: the record read now is the truth.
	cur, err := w.dir.Read(key)
	if errors.Is(err, os.ErrNotExist) || (err == nil && cur.ID != rec.ID) {
		w.log.Info("freeze record was removed or replaced by a newer freeze meanwhile; nothing to do", "instance", rec.Route.Instance, "freeze", rec.ID)
		return nil, 0, nil
	}
	res := &Thawed{Record: rec}
	st, err := c.FsfreezeStatus(octx)
	if err != nil {
		return nil, 2 * time.Second, err
	}
	if st == guest.Frozen {
		if _, err := c.FsfreezeThaw(octx); err != nil {
			return nil, time.Second, err
		}
		res.WasFrozen = true
		res.ThawAcked = time.Now()
		res.Late = res.ThawAcked.Sub(rec.Deadline)
		res.Took = res.ThawAcked.Sub(start)
	} else {
		w.log.Info("freeze record past its deadline, guest not frozen (thawed by someone else): removing the record", "instance", rec.Route.Instance, "freeze", rec.ID)
	}
	if _, err := w.dir.Remove(key, rec.ID); err != nil {
		return res, 2 * time.Second, err
	}
	return res, 0, nil
}

// open opens a client on the route's guest, waiting briefly for its lock.
func (w *watchdog) open(ctx context.Context, r freezerec.Route) (*guest.Client, error) {
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	o := guest.Options{Logger: w.log, Owner: "raksha watchdog", CallTimeout: 5 * time.Second}
	switch r.Kind {
	case freezerec.Socket:
		return guest.Dial(lctx, r.Socket, o)
	case freezerec.Libvirt:
		conn, err := w.conn(ctx, r.URI)
		if err != nil {
			return nil, err
		}
		c, err := libvirt.OpenAgent(lctx, conn, r.Domain, libvirt.AgentOptions{LockDir: r.LockDir, Guest: o})
		if err != nil && !errors.Is(err, guest.ErrLocked) && !gone(err) && !errors.Is(err, guest.ErrNotAnswering) {
			w.dropConn(r.URI) // the connection may be broken: dial anew next time
		}
		return c, err
	}
	return nil, fmt.Errorf("watchdog: unknown route kind %q", r.Kind)
}

func (w *watchdog) conn(ctx context.Context, uri string) (*libvirt.Conn, error) {
	if c, ok := w.conns[uri]; ok {
		return c, nil
	}
	c, err := libvirt.Dial(ctx, uri, libvirt.Options{Logger: w.log})
	if err != nil {
		return nil, err
	}
	w.conns[uri] = c
	return c, nil
}

func (w *watchdog) dropConn(uri string) {
	if c, ok := w.conns[uri]; ok {
		c.Close()
		delete(w.conns, uri)
	}
}

func (w *watchdog) closeConns() {
	for uri := range w.conns {
		w.dropConn(uri)
	}
}

// gone reports a guest that no longer runs: its socket has no listener,
// or its domain is not running or not defined.
func gone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, libvirt.ErrNotRunning) || errors.Is(err, libvirt.ErrNoDomain)
}

// Start starts a watchdog process: exe with args (for raksha-worker:
// "watchdog --dir DIR --parent PID"), in a session of its own so that
// signals to the caller's process group or terminal do not reach it, with
// standard input and outputs on /dev/null (it logs to a file: a dead
// parent's pipe must not kill it). The caller waits for it (exec.Cmd.Wait)
// to reap it.
func Start(exe string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(exe, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start watchdog: %w", err)
	}
	return cmd, nil
}

// Supervise keeps a watchdog running until ctx ends: start starts one,
// and one that exits is started again after a pause (it exits by itself
// only once its parent is gone, so an exit while ctx lives is a crash).
// When ctx ends the watchdog is left running: it ends by itself once this
// process is gone and no freeze record remains.
func Supervise(ctx context.Context, log *slog.Logger, start func() (*exec.Cmd, error)) {
	for {
		cmd, err := start()
		if err != nil {
			log.Error("the freeze watchdog could not start; retrying", "err", err)
		} else {
			log.Info("freeze watchdog started", "pid", cmd.Process.Pid)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				log.Error("the freeze watchdog exited; starting it again", "err", err)
			case <-ctx.Done():
				go func() { <-done }() // reaped if it ends while this process lives
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}
