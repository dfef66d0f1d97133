// Package libvirt is the compute host as libvirt shows it: on a Nova compute
// node libvirtd owns every guest's QMP monitor and guest-agent channel, so
// Raksha's host worker reaches a guest only through libvirt's RPC
// (github.com/digitalocean/go-libvirt, pure Go, on libvirtd's unix socket).
//
// Conn is one connection to libvirtd; Agent gives a guest.Client whose
// commands go through libvirt's agent pass-through
// (virDomainQemuAgentCommand), with Raksha's own lock file per guest so that
// the freeze discipline of package guest (one owner, guard thaw, orphans
// thawed at start) holds as it does on the socket path.
//
// A Nova server maps to its domain by UUID (instance UUID = domain UUID);
// Domain accepts a UUID or a domain name (instance-%08x).
package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	lv "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
)

// DefaultURI is the libvirt URI of a compute node's system instance.
const DefaultURI = "qemu:///system"

// DefaultSocket is libvirtd's read-write socket for qemu:///system.
const DefaultSocket = "/run/libvirt/libvirt-sock"

// ErrNoDomain: no domain has the UUID or name asked for (the server was
// deleted, or it runs on another host).
var ErrNoDomain = errors.New("libvirt: no such domain")

// ErrNotRunning: the domain is defined but not running (no agent, no
// monitor to talk to).
var ErrNotRunning = errors.New("libvirt: domain is not running")

// Conn is a connection to one libvirtd. Its methods are safe for
// concurrent use; go-libvirt multiplexes calls on the one socket.
type Conn struct {
	uri string
	l   *lv.Libvirt
	log *slog.Logger

	mu     sync.Mutex
	closed bool
}

// Options configures Dial.
type Options struct {
	// Logger receives the connection's logs (slog.Default when nil).
	Logger *slog.Logger
	// Timeout bounds the socket connect (5 s when zero).
	Timeout time.Duration
}

// Dial connects to libvirtd at uri: "" or "qemu:///system" (the socket
// DefaultSocket), or "qemu:///system?socket=PATH" / "qemu+unix:///system?socket=PATH"
// for another socket. Only local (unix socket) URIs are accepted: the host
// worker runs on the compute node it serves.
func Dial(ctx context.Context, uri string, opts Options) (*Conn, error) {
	if uri == "" {
		uri = DefaultURI
	}
	sock, driverURI, err := parseURI(uri)
	if err != nil {
		return nil, err
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	l := lv.NewWithDialer(dialers.NewLocal(dialers.WithSocket(sock), dialers.WithLocalTimeout(opts.Timeout)))
	if err := callCtx(ctx, func() error { return l.ConnectToURI(lv.ConnectURI(driverURI)) }); err != nil {
		return nil, fmt.Errorf("libvirt: connect %s (socket %s): %w", uri, sock, err)
	}
	return &Conn{uri: uri, l: l, log: log.With("libvirt", uri)}, nil
}

// parseURI returns the socket and the driver URI (without the socket
// parameter) of a local libvirt URI.
func parseURI(uri string) (sock, driver string, err error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", "", fmt.Errorf("libvirt: URI %q: %w", uri, err)
	}
	if u.Scheme != "qemu" && u.Scheme != "qemu+unix" {
		return "", "", fmt.Errorf("libvirt: URI %q: only local qemu:// or qemu+unix:// URIs are supported (the host worker runs on its compute node)", uri)
	}
	if u.Host != "" {
		return "", "", fmt.Errorf("libvirt: URI %q: a remote host is not supported (the host worker runs on its compute node)", uri)
	}
	if u.Path != "/system" {
		return "", "", fmt.Errorf("libvirt: URI %q: only the system instance (/system) holds Nova's guests", uri)
	}
	sock = u.Query().Get("socket")
	if sock == "" {
		sock = DefaultSocket
	}
	return sock, "qemu:///system", nil
}

// URI returns the URI the connection was made with.
func (c *Conn) URI() string { return c.uri }

// Close ends the connection. It is safe to call more than once.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return c.l.Disconnect()
}

// Libvirt returns the underlying go-libvirt client, for the calls this
// package does not wrap.
func (c *Conn) Libvirt() *lv.Libvirt { return c.l }

// Domain looks a domain up by UUID (a Nova instance id) or by name
// (instance-%08x). An unknown one is ErrNoDomain.
func (c *Conn) Domain(ctx context.Context, ref string) (lv.Domain, error) {
	var d lv.Domain
	err := callCtx(ctx, func() error {
		var err error
		if u, perr := parseUUID(ref); perr == nil {
			d, err = c.l.DomainLookupByUUID(u)
		} else {
			d, err = c.l.DomainLookupByName(ref)
		}
		return err
	})
	if lv.IsNotFound(err) {
		return lv.Domain{}, fmt.Errorf("domain %s: %w", ref, ErrNoDomain)
	}
	if err != nil {
		return lv.Domain{}, fmt.Errorf("libvirt: domain %s: %w", ref, err)
	}
	return d, nil
}

// Capacity is the size in bytes of the domain's disk with the given target
// as the guest sees it (a resized disk reports its new size).
func (c *Conn) Capacity(ctx context.Context, d lv.Domain, target string) (int64, error) {
	var capacity uint64
	err := callCtx(ctx, func() error {
		var err error
		_, capacity, _, err = c.l.DomainGetBlockInfo(d, target, 0)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("libvirt: size of %s's disk %s: %w", d.Name, target, err)
	}
	return int64(capacity), nil
}

// Running reports whether d is running (or paused: QEMU is there).
func (c *Conn) Running(ctx context.Context, d lv.Domain) (bool, error) {
	var st int32
	err := callCtx(ctx, func() error {
		var err error
		st, _, err = c.l.DomainGetState(d, 0)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("libvirt: state of %s: %w", d.Name, err)
	}
	switch lv.DomainState(st) {
	case lv.DomainRunning, lv.DomainPaused, lv.DomainBlocked, lv.DomainPmsuspended:
		return true, nil
	}
	return false, nil
}

// RunningDomains lists the running domains.
func (c *Conn) RunningDomains(ctx context.Context) ([]lv.Domain, error) {
	var ds []lv.Domain
	err := callCtx(ctx, func() error {
		var err error
		ds, _, err = c.l.ConnectListAllDomains(1, lv.ConnectListDomainsActive)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("libvirt: list running domains: %w", err)
	}
	return ds, nil
}

// UUIDString formats a libvirt UUID the usual way (8-4-4-4-12 hex).
func UUIDString(u lv.UUID) string {
	const hex = "0123456789abcdef"
	var b strings.Builder
	for i, x := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b.WriteByte('-')
		}
		b.WriteByte(hex[x>>4])
		b.WriteByte(hex[x&15])
	}
	return b.String()
}

// parseUUID parses an 8-4-4-4-12 (or 32-digit) hex UUID.
func parseUUID(s string) (lv.UUID, error) {
	var u lv.UUID
	h := strings.ReplaceAll(s, "-", "")
	if len(h) != 2*len(u) || (strings.Contains(s, "-") && len(s) != 36) {
		return u, fmt.Errorf("not a UUID: %q", s)
	}
	for i := range u {
		hi, lo := unhex(h[2*i]), unhex(h[2*i+1])
		if hi < 0 || lo < 0 {
			return u, fmt.Errorf("not a UUID: %q", s)
		}
		u[i] = byte(hi<<4 | lo)
	}
	return u, nil
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// callCtx runs f, which cannot be interrupted (go-libvirt's calls take no
// context), and returns its error, or ctx's error when ctx ends first; f
// then finishes in the background and its result is dropped.
func callCtx(ctx context.Context, f func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// DefaultLockDir is where a compute node's Raksha processes keep the
// guests' lock files (<uuid>.lock): the host worker and the CLI agree on it.
const DefaultLockDir = "/run/raksha/libvirt-locks"

// DefaultWorkDir holds the pull backups' sockets and scratch files, one
// directory per domain UUID.
const DefaultWorkDir = "/var/lib/raksha/libvirt"
