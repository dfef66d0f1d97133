package guest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"
)

// DefaultFreezeTimeout is the freeze deadline when FreezeOptions.Timeout is zero.
const DefaultFreezeTimeout = 10 * time.Second

// DefaultHookTimeout bounds a hook whose Timeout is zero.
const DefaultHookTimeout = 30 * time.Second

// guardThawTimeout bounds each thaw attempt of the guard.
const guardThawTimeout = 5 * time.Second

// HookPolicy says what a failed pre- or post-freeze hook does.
type HookPolicy int

const (
	// HookFail: a failed pre-hook fails Freeze (no freeze happens), a failed
	// post-hook makes Thaw return a *HookError (the guest is thawed anyway).
	HookFail HookPolicy = iota
	// HookContinue: failures are logged and reported in the results only.
	HookContinue
)

// Hook is a program run in the guest through guest-exec: pre-hooks before
// the freeze, post-hooks after the thaw. A hook fails when it cannot be
// started, runs past its timeout, or exits non-zero.
type Hook struct {
	// Name labels the hook in logs and errors (Path when empty).
	Name string
	// Path, Args and Env are the program, its arguments and extra environment.
	Path string
	Args []string
	Env  []string
	// Timeout bounds the hook (DefaultHookTimeout when zero).
	Timeout time.Duration
}

func (h Hook) name() string {
	if h.Name != "" {
		return h.Name
	}
	return h.Path
}

// HookResult is what one hook did.
type HookResult struct {
	// Hook is the hook that ran.
	Hook Hook
	// Phase is "pre" or "post".
	Phase string
	// ExitCode is its exit status (-1 when it did not exit normally).
	ExitCode int
	// Stdout and Stderr are its output.
	Stdout, Stderr []byte
	// Duration is how long it took.
	Duration time.Duration
	// Err is nil when the hook succeeded.
	Err error
}

// FreezeOptions configures Freeze.
type FreezeOptions struct {
	// Timeout is the freeze deadline, counted from the moment the freeze
	// command is sent: the guard thaws the guest by itself then, whatever
	// the caller does (DefaultFreezeTimeout when zero). It must cover
	// everything done inside the freeze window (DESIGN.md: the snapshots
	// reaching "available").
	Timeout time.Duration
	// Mountpoints, when given, limits the freeze to those filesystems
	// (guest-fsfreeze-freeze-list); otherwise every freezable one is frozen.
	Mountpoints []string
	// PreHooks run in order before the freeze, PostHooks after the thaw.
	PreHooks, PostHooks []Hook
	// OnHookFailure says whether a failed hook fails the operation.
	OnHookFailure HookPolicy
}

// ThawReport tells how a freeze ended.
type ThawReport struct {
	// GuardThawed is true when the guard thawed the guest because the freeze
	// deadline passed before Thaw was called: the backup cannot be called
	// application-consistent.
	GuardThawed bool
	// FreezeSent is when the freeze command was sent; ThawAcked when the
	// agent acknowledged the thaw.
	FreezeSent, ThawAcked time.Time
	// Window is ThawAcked - FreezeSent: the longest the guest's writes
	// could have been stalled by this freeze.
	Window time.Duration
	// Thawed is the number of filesystems the thaw reported.
	Thawed int
	// PostHooks are the post-hooks' results.
	PostHooks []HookResult
}

// FreezeHandle is a freeze in effect. Its guard thaws the guest when the
// deadline passes; Thaw thaws it now. The exported fields are set by Freeze
// and not changed after.
type FreezeHandle struct {
	// FreezeSent is when the freeze command was sent, Frozen when the agent
	// acknowledged it.
	FreezeSent, Frozen time.Time
	// Deadline is when the guard thaws the guest: FreezeSent + Timeout.
	Deadline time.Time
	// Filesystems is the number of filesystems the freeze reported.
	Filesystems int
	// ID identifies this freeze in the client's FreezeJournal.
	ID string
	// PreHooks are the pre-hooks' results.
	PreHooks []HookResult

	c    *Client
	opts FreezeOptions

	mu      sync.Mutex // serialises thaw attempts; guards the fields below
	thawed  bool
	report  *ThawReport
	thawErr error // the post-hook error Thaw returns (HookFail)

	done      chan struct{} // closed once thawed
	stop      chan struct{} // closed to end the guard
	stopOnce  sync.Once
	guardDone chan struct{}
}

// Freeze runs the pre-hooks, then freezes the guest's filesystems (the
// guest's own fsfreeze hooks run inside the agent) and returns the handle
// of the freeze. From the moment the freeze command is sent, a guard
// goroutine of this process thaws the guest at the deadline unless Thaw
// came first; it runs on even if the caller forgets the handle. When the
// freeze command fails or times out, Freeze thaws before returning the
// error. A guest already frozen fails with ErrAlreadyFrozen (ThawOrphans
// thaws guests left frozen by dead owners); so does a second Freeze on a
// client whose freeze is not thawed yet.
func (c *Client) Freeze(ctx context.Context, opts FreezeOptions) (*FreezeHandle, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultFreezeTimeout
	}
	c.freezeMu.Lock()
	busy := c.freeze != nil
	c.freezeMu.Unlock()
	if busy {
		return nil, fmt.Errorf("guest agent %s: freeze: %w (by this client)", c.path, ErrAlreadyFrozen)
	}
	st, err := c.FsfreezeStatus(ctx)
	if err != nil {
		return nil, fmt.Errorf("freeze: %w", err)
	}
	if st == Frozen {
		return nil, fmt.Errorf("guest agent %s: freeze: %w", c.path, ErrAlreadyFrozen)
	}
	h := &FreezeHandle{c: c, opts: opts, done: make(chan struct{}), stop: make(chan struct{}), guardDone: make(chan struct{})}
	for _, hk := range opts.PreHooks {
		r := c.runHook(ctx, hk, "pre")
		h.PreHooks = append(h.PreHooks, r)
		if r.Err != nil {
			if opts.OnHookFailure == HookFail {
				return nil, fmt.Errorf("guest agent %s: freeze: %w", c.path, &HookError{Result: r})
			}
			c.log.Warn("pre-hook failed; freezing anyway", "hook", hk.name(), "err", r.Err)
		}
	}

	c.freezeMu.Lock()
	if c.freeze != nil {
		c.freezeMu.Unlock()
		return nil, fmt.Errorf("guest agent %s: freeze: %w (by this client)", c.path, ErrAlreadyFrozen)
	}
	c.freeze = h
	c.freezeMu.Unlock()

	h.ID = newFreezeID()
	h.FreezeSent = time.Now()
	h.Deadline = h.FreezeSent.Add(opts.Timeout)
	if j := c.opts.Journal; j != nil {
		// Recorded before the command is sent: a freeze whose owner dies
		// at any moment from here on has a record for the watchdog.
		if err := j.Begin(h.ID, h.Deadline, c.opts.Owner); err != nil {
			c.freezeMu.Lock()
			c.freeze = nil
			c.freezeMu.Unlock()
			return nil, fmt.Errorf("guest agent %s: freeze: record: %w", c.path, err)
		}
		h.FreezeSent = time.Now() // the deadline stays the recorded one
	}
	go h.guard()
	fctx, cancel := context.WithDeadline(ctx, h.Deadline)
	n, err := c.FsfreezeFreeze(fctx, opts.Mountpoints)
	cancel()
	if err != nil {
		c.log.Error("freeze failed; thawing", "err", err)
		tctx, tcancel := context.WithTimeout(context.Background(), guardThawTimeout)
		_, terr := h.thaw(tctx, false)
		tcancel()
		if terr != nil {
			c.log.Error("thaw after failed freeze failed; the guard keeps trying", "err", terr)
		}
		return nil, fmt.Errorf("freeze: %w", err)
	}
	h.Frozen = time.Now()
	h.Filesystems = n
	c.log.Info("guest frozen", "filesystems", n, "took", h.Frozen.Sub(h.FreezeSent), "deadline", opts.Timeout)
	return h, nil
}

// Done is closed once the guest is thawed (by Thaw, the guard or Close).
func (h *FreezeHandle) Done() <-chan struct{} { return h.done }

// Thaw thaws the guest now (retrying while the agent fails to answer, until
// ctx is done or, when ctx has no deadline, for Options.CallTimeout), then
// runs the post-hooks. It is idempotent: once thawed, every
// call returns the same report (and the same post-hook error), and
// report.GuardThawed says whether the guard thawed first. When Thaw fails the
// guard stays armed and keeps trying.
func (h *FreezeHandle) Thaw(ctx context.Context) (*ThawReport, error) {
	rep, err := h.thaw(ctx, false)
	if rep != nil {
		h.stopGuard()
	}
	return rep, err
}

func (h *FreezeHandle) stopGuard() {
	h.stopOnce.Do(func() { close(h.stop) })
}

// thaw thaws once; later calls return the first successful report.
func (h *FreezeHandle) thaw(ctx context.Context, byGuard bool) (*ThawReport, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.thawed {
		r := *h.report
		return &r, h.thawErr
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.c.opts.CallTimeout)
		defer cancel()
	}
	var (
		n   int
		err error
	)
	for pause := 100 * time.Millisecond; ; {
		n, err = h.c.FsfreezeThaw(ctx)
		if err == nil || ctx.Err() != nil || errors.Is(err, ErrClosed) {
			break
		}
		h.c.log.Warn("thaw failed; retrying", "err", err, "guard", byGuard)
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
		if pause < time.Second {
			pause *= 2
		}
	}
	if err != nil {
		return nil, fmt.Errorf("thaw: %w", err)
	}
	now := time.Now()
	if j := h.c.opts.Journal; j != nil {
		if jerr := j.End(h.ID); jerr != nil {
			h.c.log.Warn("thawed, but the freeze record stays (the watchdog will find the guest thawed)", "err", jerr)
		}
	}
	h.thawed = true
	h.report = &ThawReport{GuardThawed: byGuard, FreezeSent: h.FreezeSent, ThawAcked: now, Window: now.Sub(h.FreezeSent), Thawed: n}
	close(h.done)
	h.c.freezeMu.Lock()
	if h.c.freeze == h {
		h.c.freeze = nil
	}
	h.c.freezeMu.Unlock()
	lvl := h.c.log.Info
	if byGuard {
		lvl = h.c.log.Warn
	}
	lvl("guest thawed", "window", h.report.Window, "by_guard", byGuard, "filesystems", n)

	for _, hk := range h.opts.PostHooks {
		hctx := ctx
		if byGuard || ctx.Err() != nil {
			hctx = context.Background()
		}
		r := h.c.runHook(hctx, hk, "post")
		h.report.PostHooks = append(h.report.PostHooks, r)
		if r.Err != nil {
			if h.opts.OnHookFailure == HookFail && h.thawErr == nil {
				h.thawErr = fmt.Errorf("guest agent %s: %w", h.c.path, &HookError{Result: r})
			}
			h.c.log.Warn("post-hook failed", "hook", hk.name(), "err", r.Err)
		}
	}
	rep := *h.report
	return &rep, h.thawErr
}

// guard thaws at the deadline unless stopped first, retrying until the thaw
// succeeds or the handle is stopped (a successful Thaw, or Close).
func (h *FreezeHandle) guard() {
	defer close(h.guardDone)
	t := time.NewTimer(time.Until(h.Deadline))
	defer t.Stop()
	select {
	case <-h.stop:
		return
	case <-h.done:
		return
	case <-t.C:
	}
	h.c.log.Warn("freeze deadline passed; guard thawing the guest", "deadline", h.opts.Timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), guardThawTimeout)
		_, err := h.thaw(ctx, true)
		cancel()
		if err == nil || errors.Is(err, ErrHookFailed) || errors.Is(err, ErrClosed) {
			return
		}
		if isNoServer(err) {
			h.c.log.Error("guard: the guest's socket is gone (QEMU stopped): nothing left to thaw", "err", err)
			return
		}
		select {
		case <-h.stop:
			return
		case <-time.After(time.Second):
		}
	}
}

// newFreezeID returns a random id for a freeze.
func newFreezeID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// runHook runs one hook through guest-exec with its timeout.
func (c *Client) runHook(ctx context.Context, hk Hook, phase string) HookResult {
	to := hk.Timeout
	if to <= 0 {
		to = DefaultHookTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	res := HookResult{Hook: hk, Phase: phase, ExitCode: -1}
	start := time.Now()
	out, err := c.Run(ctx, ExecRequest{Path: hk.Path, Args: hk.Args, Env: hk.Env, Capture: true})
	res.Duration = time.Since(start)
	if err != nil {
		res.Err = err
		return res
	}
	res.ExitCode, res.Stdout, res.Stderr = out.ExitCode, out.Stdout, out.Stderr
	switch {
	case out.Signal != 0:
		res.Err = fmt.Errorf("killed by signal %d", out.Signal)
	case out.ExitCode != 0:
		res.Err = fmt.Errorf("exit status %d: %s", out.ExitCode, Tail(out.Stderr, 512))
	}
	c.log.Info("hook ran", "phase", phase, "hook", hk.name(), "exit", res.ExitCode, "took", res.Duration, "err", res.Err)
	return res
}
