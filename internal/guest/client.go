// Package guest is Raksha's QEMU guest agent (qemu-ga) client: JSON commands
// over the host side of the agent's virtio-serial channel (a unix socket),
// and freezes with a guaranteed thaw.
//
// A Client is the only client of one guest's agent socket (DESIGN.md,
// "Sockets"): Dial takes the guest's lock file (an flock held as long as the
// client is open, released by the kernel if the process dies), connects and
// resynchronises with guest-sync-delimited. Every call has a deadline: the
// context's, or Options.CallTimeout when the context has none.
//
// Freeze freezes the guest's filesystems and returns a FreezeHandle: a guard
// goroutine thaws the guest by itself when the freeze deadline passes, and
// ThawOrphans, run when a host worker starts, thaws every guest left frozen by
// a process that died (qemu-ga has no guest-side freeze timeout on Linux).
//
// The directory layout of a compute host (DESIGN.md, "Sockets") is
// <host dir>/instances/<instance name>/{qmp,qga}.sock; this package adds
// qga.lock beside them.
package guest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// DefaultCallTimeout is the deadline of a call whose context has none.
const DefaultCallTimeout = 10 * time.Second

// maxReply bounds one reply line (guest-exec-status can carry up to 16 MiB of
// output per stream, base64-encoded).
const maxReply = 64 << 20

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
}

// Client talks to one guest agent. Its methods are safe for concurrent use;
// commands are sent one at a time. Close it to release the guest's lock.
type Client struct {
	path string
	opts Options
	log  *slog.Logger
	lock *lockFile

	mu       sync.Mutex // serialises commands; guards the fields below
	conn     net.Conn
	br       *bufio.Reader
	needSync bool
	nextID   uint32
	closed   bool

	freezeMu sync.Mutex
	freeze   *FreezeHandle // the freeze not yet thawed, if any
}

// Dial takes the lock of the agent socket at path (see LockPath; waiting for
// it until ctx is done unless opts.NoWait), connects and resynchronises with
// the agent. It fails with ErrLocked when the lock is held by another client
// and with ErrNotAnswering when the agent does not answer before ctx's
// deadline (or Options.CallTimeout).
func Dial(ctx context.Context, path string, opts Options) (*Client, error) {
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = DefaultCallTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	var id [4]byte
	_, _ = rand.Read(id[:])
	c := &Client{path: path, opts: opts, log: log.With("agent", path), nextID: binary.LittleEndian.Uint32(id[:])&0x3fffffff + 1, needSync: true}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("guest agent %s: dial: %w: %w", path, ErrNotAnswering, err)
	}
	lock, err := acquireLock(ctx, LockPath(path), opts.Owner, !opts.NoWait)
	if err != nil {
		return nil, fmt.Errorf("guest agent %s: dial: %w", path, err)
	}
	c.lock = lock
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	c.mu.Lock()
	err = c.connectLocked(ctx)
	if err != nil && c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
	c.mu.Unlock()
	if err != nil {
		_ = lock.release()
		return nil, fmt.Errorf("guest agent %s: dial: %w", path, err)
	}
	return c, nil
}

// Path returns the agent socket's path.
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
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
	return errors.Join(thawErr, c.lock.release())
}

// callContext gives ctx the client's default deadline when it has none.
func (c *Client) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.opts.CallTimeout)
}

// connectLocked (re)connects and syncs. c.mu must be held.
func (c *Client) connectLocked(ctx context.Context) error {
	if c.conn == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", c.path)
		if err != nil {
			return fmt.Errorf("connect: %w: %w", ErrNotAnswering, err)
		}
		c.conn = conn
		c.br = bufio.NewReaderSize(conn, 64*1024)
		c.needSync = true
	}
	if c.needSync {
		if err := c.withDeadline(ctx, c.syncLocked); err != nil {
			if errors.Is(err, ErrTimeout) {
				return fmt.Errorf("guest-sync-delimited: %w: %w", ErrNotAnswering, err)
			}
			return fmt.Errorf("guest-sync-delimited: %w", err)
		}
		c.needSync = false
	}
	return nil
}

// withDeadline runs f with the connection's deadline set from ctx, and
// interrupts it when ctx is cancelled. Errors from a deadline are mapped to
// ErrTimeout (and ctx's error); a broken connection is dropped so the next
// call reconnects.
func (c *Client) withDeadline(ctx context.Context, f func() error) error {
	conn := c.conn
	dl, _ := ctx.Deadline()
	if err := conn.SetDeadline(dl); err != nil {
		return fmt.Errorf("set deadline: %w", err)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = conn.SetDeadline(time.Unix(1, 0)) // in the past: interrupts a blocked read
		close(fired)
	})
	err := f()
	if !stop() {
		<-fired
	}
	if err == nil {
		return nil
	}
	c.needSync = true
	if errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil {
		cause := ctx.Err()
		if cause == nil {
			cause = context.DeadlineExceeded
		}
		return fmt.Errorf("%w: %w", ErrTimeout, cause)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) {
		c.conn.Close()
		c.conn = nil
	}
	return err
}

// syncLocked sends 0xFF (which resets the agent's JSON parser) and
// guest-sync-delimited with a fresh id, then discards everything up to a
// 0xFF-delimited reply carrying that id (stale replies of earlier, timed-out
// commands and syncs are skipped).
func (c *Client) syncLocked() error {
	id := c.nextID
	c.nextID++
	msg := fmt.Sprintf("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id)
	if _, err := io.WriteString(c.conn, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	for {
		if _, err := c.br.ReadBytes(0xff); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		line, err := c.readLine()
		if err != nil {
			return err
		}
		var r struct {
			Return *uint32 `json:"return"`
		}
		if json.Unmarshal(line, &r) == nil && r.Return != nil && *r.Return == id {
			return nil
		}
		c.log.Debug("sync: skipped stale reply", "reply", string(truncate(line, 200)))
	}
}

// readLine reads one reply line (qemu-ga ends every reply with '\n'),
// without leading 0xFF bytes or surrounding blanks; empty lines are skipped.
func (c *Client) readLine() ([]byte, error) {
	var buf []byte
	for {
		chunk, err := c.br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > maxReply {
			return nil, fmt.Errorf("read: reply longer than %d bytes", maxReply)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read: %w", err)
		}
		line := bytes.TrimSpace(bytes.TrimLeft(buf, "\xff"))
		if len(line) > 0 {
			return line, nil
		}
		buf = buf[:0]
	}
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
}

type reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// call sends one command and decodes its reply's "return" into out (when
// out is not nil). Error replies come back as *CommandError.
func (c *Client) call(ctx context.Context, cmd string, args, out any) error {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("guest agent %s: %s: %w", c.path, cmd, ErrClosed)
	}
	if err := c.connectLocked(ctx); err != nil {
		return fmt.Errorf("guest agent %s: %s: %w", c.path, cmd, err)
	}
	msg, err := json.Marshal(request{Execute: cmd, Arguments: args})
	if err != nil {
		return fmt.Errorf("guest agent %s: %s: encode: %w", c.path, cmd, err)
	}
	var r reply
	err = c.withDeadline(ctx, func() error {
		if _, err := c.conn.Write(append(msg, '\n')); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		line, err := c.readLine()
		if err != nil {
			return err
		}
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("decode reply %q: %w", truncate(line, 200), err)
		}
		if r.Return == nil && r.Error == nil {
			return fmt.Errorf("reply %q has neither return nor error", truncate(line, 200))
		}
		return nil
	})
	if err != nil {
		c.needSync = true
		return fmt.Errorf("guest agent %s: %s: %w", c.path, cmd, err)
	}
	if r.Error != nil {
		return fmt.Errorf("guest agent %s: %w", c.path, &CommandError{Command: cmd, Class: r.Error.Class, Desc: r.Error.Desc})
	}
	if out != nil {
		if err := json.Unmarshal(r.Return, out); err != nil {
			return fmt.Errorf("guest agent %s: %s: decode return %q: %w", c.path, cmd, truncate(r.Return, 200), err)
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
