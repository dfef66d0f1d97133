// Package guest is Raksha's QEMU guest agent (qemu-ga) client: JSON commands
// over the host side of the agent's virtio-serial channel (a unix socket),
// and freezes with a guaranteed thaw.
//
// A Client is the only client of one guest's agent (DESIGN.md, "Sockets"):
// Dial takes the guest's lock file (an flock held as long as the client is
// open, released by the kernel if the process dies), connects to the agent
// socket and resynchronises with guest-sync-delimited; Open does the same
// over another Transport (libvirt's agent pass-through, where libvirtd owns
// the channel). Every call has a deadline: the context's, or
// Options.CallTimeout when the context has none.
//
// Freeze freezes the guest's filesystems and returns a FreezeHandle: a guard
// goroutine thaws the guest by itself when the freeze deadline passes; with
// Options.Journal the freeze is recorded before it is sent, for a watchdog
// outside the process (package watchdog) that thaws at the deadline if this
// process dies; and ThawOrphans, run when a host worker starts, thaws every
// guest left frozen by a process that died (qemu-ga has no guest-side
// freeze timeout on Linux).
//
// The directory layout of a compute host (DESIGN.md, "Sockets") is
// <host dir>/instances/<instance name>/{qmp,qga}.sock; this package adds
// qga.lock beside them.
package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// DefaultCallTimeout is the deadline of a call whose context has none.
const DefaultCallTimeout = 10 * time.Second

// Options configures Dial.
type Options struct {
	// Logger receives the client's structured logs (slog.Default when nil).
	Logger *slog.Logger
	// CallTimeout is the deadline of a call whose context has none
	// (DefaultCallTimeout when zero).
	CallTimeout time.Duration
	// Owner names the lock holder in the lock file (e.g. "backup 1234").
	Owner string
	// NoWait makes Dial fail with ErrLocked at once when another client
	// holds the guest's lock, instead of waiting for it until ctx is done.
	NoWait bool
	// Journal, when set, durably records every freeze of this client before
	// the freeze command is sent and forgets it after the thaw is confirmed,
	// for a watchdog outside this process (DESIGN.md, "Freeze ownership").
	Journal FreezeJournal
}

// FreezeJournal records a guest's freezes where a process other than the
// freezer finds them (package freezerec): if the freezer dies, the record
// outlives it and the watchdog thaws the guest at the deadline. Both
// methods are called with the guest's lock held.
type FreezeJournal interface {
	// Begin durably records freeze id with its deadline and owner before
	// the freeze command is sent; an error fails the freeze, nothing frozen.
	Begin(id string, deadline time.Time, owner string) error
	// End forgets freeze id after its thaw was confirmed (a newer
	// freeze's record stays).
	End(id string) error
}

// Client talks to one guest agent through a Transport (the agent socket,
// Dial; or libvirt's agent pass-through). Its methods are safe for
// concurrent use; commands are sent one at a time. Close it to release the
// guest's lock.
type Client struct {
	path string // the guest's name in errors: the socket path or the domain
	opts Options
	log  *slog.Logger
	lock *lockFile

	mu     sync.Mutex // serialises commands; guards t's use and closed
	t      Transport
	closed bool

	freezeMu sync.Mutex
	freeze   *FreezeHandle // the freeze not yet thawed, if any
}

// Transport carries agent commands to one guest and their replies back.
// A Client serialises its calls: a Transport never sees two at once.
type Transport interface {
	// Name names the guest in errors and logs (a socket path, a domain).
	Name() string
	// Call sends one command with its JSON arguments (nil: none) and
	// returns the reply's "return" value. An error reply of the agent is a
	// *CommandError; no reply before ctx's deadline is ErrTimeout; a guest
	// whose agent cannot be reached or does not answer is ErrNotAnswering.
	Call(ctx context.Context, cmd string, args json.RawMessage) (json.RawMessage, error)
	// Close releases the transport's connection.
	Close() error
}

// Dial takes the lock of the agent socket at path (see LockPath; waiting for
// it until ctx is done unless opts.NoWait), connects and resynchronises with
// the agent. It fails with ErrLocked when the lock is held by another client
// and with ErrNotAnswering when the agent does not answer before ctx's
// deadline (or Options.CallTimeout).
func Dial(ctx context.Context, path string, opts Options) (*Client, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("guest agent %s: dial: %w: %w", path, ErrNotAnswering, err)
	}
	return Open(ctx, newSocketTransport(path, opts.Logger), LockPath(path), opts)
}

// Open makes a Client of t: it takes the guest's lock file lockPath
// (waiting for it until ctx is done unless opts.NoWait) and checks that the
// agent answers (guest-ping), then returns the client, which owns t. It
// fails with ErrLocked when the lock is held by another client and with
// ErrNotAnswering when the agent does not answer before ctx's deadline (or
// Options.CallTimeout); t is closed then.
func Open(ctx context.Context, t Transport, lockPath string, opts Options) (*Client, error) {
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = DefaultCallTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	name := t.Name()
	c := &Client{path: name, opts: opts, log: log.With("agent", name), t: t}
	lock, err := acquireLock(ctx, lockPath, opts.Owner, !opts.NoWait)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("guest agent %s: dial: %w", name, err)
	}
	c.lock = lock
	if err := c.call(ctx, "guest-ping", nil, nil); err != nil {
		t.Close()
		_ = lock.release()
		if errors.Is(err, ErrTimeout) && !errors.Is(err, ErrNotAnswering) {
			err = fmt.Errorf("%w: %w", ErrNotAnswering, err)
		}
		return nil, fmt.Errorf("dial: %w", err)
	}
	return c, nil
}

// Path returns the guest's name: the agent socket's path, or what the
// Transport calls it.
func (c *Client) Path() string { return c.path }

// Close thaws a freeze of this client that is not thawed yet (bounded by
// Options.CallTimeout), closes the connection and releases the guest's lock.
// It is safe to call more than once.
func (c *Client) Close() error {
	var thawErr error
	c.freezeMu.Lock()
	h := c.freeze
	c.freezeMu.Unlock()
	if h != nil {
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.CallTimeout)
		if _, err := h.Thaw(ctx); err != nil && !errors.Is(err, ErrHookFailed) {
			thawErr = fmt.Errorf("guest agent %s: close: thaw: %w", c.path, err)
			c.log.Error("close: thaw failed; the guest may stay frozen until ThawOrphans", "err", err)
		}
		cancel()
		h.stopGuard()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return thawErr
	}
	c.closed = true
	return errors.Join(thawErr, c.t.Close(), c.lock.release())
}

// callContext gives ctx the client's default deadline when it has none.
func (c *Client) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.opts.CallTimeout)
}

// call sends one command and decodes its reply's "return" into out (when
// out is not nil). Error replies come back as *CommandError.
func (c *Client) call(ctx context.Context, cmd string, args, out any) error {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	var raw json.RawMessage
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("guest agent %s: %s: encode: %w", c.path, cmd, err)
		}
		raw = b
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("guest agent %s: %s: %w", c.path, cmd, ErrClosed)
	}
	ret, err := c.t.Call(ctx, cmd, raw)
	if err != nil {
		var ce *CommandError
		if errors.As(err, &ce) {
			return fmt.Errorf("guest agent %s: %w", c.path, err)
		}
		return fmt.Errorf("guest agent %s: %s: %w", c.path, cmd, err)
	}
	if out != nil {
		if err := json.Unmarshal(ret, out); err != nil {
			return fmt.Errorf("guest agent %s: %s: decode return %q: %w", c.path, cmd, Redact(string(truncate(ret, 200))), err)
		}
	}
	return nil
}

func truncate(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	return b[:n]
}
