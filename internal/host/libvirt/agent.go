package libvirt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	lv "github.com/digitalocean/go-libvirt"

	"github.com/raksha-backup/raksha/internal/freezerec"
	"github.com/raksha-backup/raksha/internal/guest"
)

// maxAgentReply bounds one agent reply taken from libvirt (as the socket
// path bounds its reply lines): a guest cannot grow the worker's memory
// beyond it. libvirt itself caps its RPC messages at 32 MiB.
const maxAgentReply = 64 << 20

// AgentTransport is a guest.Transport over libvirt's agent pass-through
// (virDomainQemuAgentCommand): libvirtd owns the guest's agent channel,
// resynchronises it before each command and serialises commands from all
// its clients. Every command is sent through the pass-through with an
// explicit timeout (the ctx deadline, rounded up to whole seconds), freeze
// and thaw included: libvirt's own virDomainFSFreeze/Thaw wait for the
// domain's agent response timeout, which by default blocks for ever, and a
// frozen guest must never wait on a call without a deadline.
type AgentTransport struct {
	c   *Conn
	dom lv.Domain
}

// NewAgentTransport returns the transport to dom's agent.
func NewAgentTransport(c *Conn, dom lv.Domain) *AgentTransport {
	return &AgentTransport{c: c, dom: dom}
}

var _ guest.Transport = (*AgentTransport)(nil)

// Name names the guest: "libvirt domain NAME (UUID)".
func (t *AgentTransport) Name() string {
	return fmt.Sprintf("libvirt domain %s (%s)", t.dom.Name, UUIDString(t.dom.UUID))
}

// Close does nothing: the libvirt connection belongs to the Conn.
func (t *AgentTransport) Close() error { return nil }

// Ping sends guest-ping.
func (t *AgentTransport) Ping(ctx context.Context) error {
	_, err := t.Call(ctx, "guest-ping", nil)
	return err
}

// Call sends one command through libvirt and returns its "return" value.
func (t *AgentTransport) Call(ctx context.Context, cmd string, args json.RawMessage) (json.RawMessage, error) {
	msg, err := json.Marshal(struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments,omitempty"`
	}{cmd, args})
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	timeout := int32(guest.DefaultCallTimeout / time.Second)
	if dl, ok := ctx.Deadline(); ok {
		s := math.Ceil(time.Until(dl).Seconds())
		timeout = int32(max(1, min(s, 3600)))
	}
	var out lv.OptString
	err = callCtx(ctx, func() error {
		var err error
		out, err = t.c.l.QEMUDomainAgentCommand(t.dom, string(msg), timeout, 0)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", guest.ErrTimeout, ctx.Err())
		}
		return nil, agentError(cmd, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("libvirt returned no reply")
	}
	if len(out[0]) > maxAgentReply {
		return nil, fmt.Errorf("reply longer than %d bytes", maxAgentReply)
	}
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(out[0]), &r); err != nil {
		return nil, fmt.Errorf("decode reply %.200q: %w", out[0], err)
	}
	if r.Error != nil {
		return nil, &guest.CommandError{Command: cmd, Class: r.Error.Class, Desc: r.Error.Desc}
	}
	if r.Return == nil {
		return nil, fmt.Errorf("reply %.200q has neither return nor error", out[0])
	}
	return r.Return, nil
}

// agentFailed matches libvirt's report of an error reply of the agent:
// "unable to execute QEMU agent command 'CMD': DESC".
var agentFailed = regexp.MustCompile(`unable to execute QEMU agent command '[^']*': (.*)$`)

// agentError maps libvirt's errors to package guest's: an error reply of
// the agent becomes a *guest.CommandError (class GenericError: libvirt
// keeps only the description), an agent that does not answer or a domain
// without one ErrNotAnswering, a command that timed out ErrTimeout.
func agentError(cmd string, err error) error {
	var e lv.Error
	if !errors.As(err, &e) {
		return fmt.Errorf("libvirt: %w", err)
	}
	code := lv.ErrorNumber(e.Code)
	if m := agentFailed.FindStringSubmatch(e.Message); m != nil {
		return &guest.CommandError{Command: cmd, Class: "GenericError", Desc: m[1]}
	}
	switch code {
	case lv.ErrAgentCommandTimeout, lv.ErrOperationTimeout:
		return fmt.Errorf("%w: libvirt: %s", guest.ErrTimeout, e.Message)
	case lv.ErrAgentUnresponsive, lv.ErrAgentUnsynced, lv.ErrOperationInvalid, lv.ErrNoDomain:
		return fmt.Errorf("%w: libvirt: %s", guest.ErrNotAnswering, e.Message)
	case lv.ErrArgumentUnsupported, lv.ErrNoSupport:
		if strings.Contains(e.Message, "agent") {
			return fmt.Errorf("%w: libvirt: %s", guest.ErrNotAnswering, e.Message)
		}
	}
	return fmt.Errorf("libvirt (code %d): %s", e.Code, e.Message)
}

// AgentOptions configures OpenAgent.
type AgentOptions struct {
	// LockDir holds Raksha's lock file per guest, <LockDir>/<uuid>.lock:
	// a directory of the host worker's own (never Nova's instance
	// directory).
	LockDir string
	// Guest configures the client (logger, call timeout, owner, NoWait).
	Guest guest.Options
	// Freezes, when set (and Guest.Journal is not), records the client's
	// freezes there for the watchdog: route Libvirt, the connection's URI,
	// the domain's UUID and LockDir.
	Freezes *freezerec.Dir
}

// LockPath is the lock file of the guest with domain UUID uuid.
func LockPath(lockDir, uuid string) string { return filepath.Join(lockDir, uuid+".lock") }

// OpenAgent opens a guest.Client on the agent of the domain ref (UUID or
// name) through libvirt, holding the guest's lock file as the socket path
// does. A domain that is not running, or whose agent does not answer, is
// guest.ErrNotAnswering; an unknown one ErrNoDomain.
func OpenAgent(ctx context.Context, c *Conn, ref string, opts AgentOptions) (*guest.Client, error) {
	if opts.LockDir == "" {
		return nil, errors.New("libvirt: open agent: no lock directory")
	}
	dom, err := c.Domain(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("open agent: %w", err)
	}
	up, err := c.Running(ctx, dom)
	if err != nil {
		return nil, fmt.Errorf("open agent: %w", err)
	}
	if !up {
		return nil, fmt.Errorf("open agent of %s: %w: %w", dom.Name, guest.ErrNotAnswering, ErrNotRunning)
	}
	if err := os.MkdirAll(opts.LockDir, 0o700); err != nil {
		return nil, fmt.Errorf("open agent: %w", err)
	}
	if opts.Guest.Logger == nil {
		opts.Guest.Logger = c.log
	}
	uuid := UUIDString(dom.UUID)
	if opts.Freezes != nil && opts.Guest.Journal == nil {
		j, err := opts.Freezes.Journal(freezerec.Route{Kind: freezerec.Libvirt, Instance: dom.Name, URI: c.URI(), Domain: uuid, LockDir: opts.LockDir})
		if err != nil {
			return nil, fmt.Errorf("open agent: %w", err)
		}
		opts.Guest.Journal = j
	}
	return guest.Open(ctx, NewAgentTransport(c, dom), LockPath(opts.LockDir, uuid), opts.Guest)
}

// ThawOrphans thaws every running domain's guest that is frozen without a
// live owner (no host worker holds its lock in lockDir): run it when a host
// worker starts on a compute node. Guests whose agents do not answer are
// skipped; see guest.ThawOrphanGuests. only, when not nil, limits the
// sweep to the domains it accepts (by name and UUID).
func ThawOrphans(ctx context.Context, c *Conn, lockDir string, only func(name, uuid string) bool, opts guest.OrphanOptions) ([]guest.OrphanResult, error) {
	all, err := c.RunningDomains(ctx)
	if err != nil {
		return nil, fmt.Errorf("thaw orphans: %w", err)
	}
	var doms []lv.Domain
	for _, d := range all {
		if only == nil || only(d.Name, UUIDString(d.UUID)) {
			doms = append(doms, d)
		}
	}
	if err := os.MkdirAll(lockDir, 0o700); err != nil {
		return nil, fmt.Errorf("thaw orphans: %w", err)
	}
	guests := make([]guest.OrphanGuest, len(doms))
	for i, d := range doms {
		uuid := UUIDString(d.UUID)
		guests[i] = guest.OrphanGuest{Instance: d.Name + " (" + uuid + ")", LockPath: LockPath(lockDir, uuid),
			Open: func(ctx context.Context, o guest.Options) (*guest.Client, error) {
				return OpenAgent(ctx, c, uuid, AgentOptions{LockDir: lockDir, Guest: o})
			}}
	}
	return guest.ThawOrphanGuests(ctx, guests, opts)
}

// ErrStopped: the domain stopped while something waited for it.
var ErrStopped = errors.New("libvirt: the domain stopped")

// WaitAgent pings dom's agent every half second until it answers (nil),
// the domain stops (ErrStopped) or ctx ends.
func WaitAgent(ctx context.Context, c *Conn, dom lv.Domain) error {
	for {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := NewAgentTransport(c, dom).Ping(pctx)
		cancel()
		if err == nil {
			return nil
		}
		if up, serr := c.Running(ctx, dom); serr == nil && !up {
			return fmt.Errorf("wait for the agent of %s: %w before its agent answered", dom.Name, ErrStopped)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the agent of %s: %w (last: %v)", dom.Name, ctx.Err(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}
