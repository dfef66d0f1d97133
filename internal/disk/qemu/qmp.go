package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// QMPError is an error QEMU answered a command with.
type QMPError struct {
	Command string
	Desc    string
}

func (e *QMPError) Error() string { return fmt.Sprintf("qmp %s: %s", e.Command, e.Desc) }

// Monitor is a QMP connection (go-qemu's socket monitor) with deadlines and
// typed arguments. Commands are serialized. Events are not read (go-qemu
// drops them when nobody listens); jobs are polled instead.
type Monitor struct {
	mon *qmp.SocketMonitor
}

// DialMonitor connects to a QMP unix socket.
func DialMonitor(ctx context.Context, socket string) (*Monitor, error) {
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	mon, err := qmp.NewSocketMonitor("unix", socket, timeout)
	if err != nil {
		return nil, fmt.Errorf("qmp dial %s: %w", socket, err)
	}
	// QEMU greets one client per monitor at a time; a second client waits
	// silently, and go-qemu's Connect has no deadline of its own.
	done := make(chan error, 1)
	go func() { done <- mon.Connect() }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err = <-done:
	case <-ctx.Done():
		mon.Disconnect()
		return nil, fmt.Errorf("qmp handshake on %s: %w (is another client holding the monitor?)", socket, ctx.Err())
	case <-t.C:
		mon.Disconnect()
		return nil, fmt.Errorf("qmp handshake on %s: no greeting within %v (is another client holding the monitor?)", socket, timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("qmp handshake on %s: %w", socket, err)
	}
	return &Monitor{mon: mon}, nil
}

// Close disconnects.
func (m *Monitor) Close() error { return m.mon.Disconnect() }

// Run executes command with args (nil for none) and decodes its "return"
// into out (nil to ignore). A cancelled ctx abandons the wait and closes the
// connection, since QMP cannot cancel a command.
func (m *Monitor) Run(ctx context.Context, command string, args, out any) error {
	req, err := json.Marshal(qmp.Command{Execute: command, Args: args})
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	type result struct {
		raw []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		raw, err := m.mon.Run(req)
		done <- result{raw, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		m.mon.Disconnect()
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
	if res.err != nil {
		if strings.Contains(res.err.Error(), "token too long") {
			return fmt.Errorf("qmp %s: reply over go-qemu's 64 KiB line limit: %w", command, res.err)
		}
		var ne net.Error
		if errors.As(res.err, &ne) || errors.Is(res.err, io.EOF) || errors.Is(res.err, net.ErrClosed) {
			return fmt.Errorf("qmp %s: connection: %w", command, res.err)
		}
		// go-qemu returns QEMU's own error answers as plain errors.
		return &QMPError{Command: command, Desc: res.err.Error()}
	}
	if out == nil {
		return nil
	}
	var wrap struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(res.raw, &wrap); err != nil {
		return fmt.Errorf("qmp %s: decode reply: %w", command, err)
	}
	if err := json.Unmarshal(wrap.Return, out); err != nil {
		return fmt.Errorf("qmp %s: decode return: %w", command, err)
	}
	return nil
}

// Action is one action of a QMP transaction.
type Action struct {
	Type string `json:"type"`
	Data any    `json:"data"`
}

// Transaction runs actions atomically: all or none take effect.
func (m *Monitor) Transaction(ctx context.Context, actions []Action) error {
	return m.Run(ctx, "transaction", map[string]any{"actions": actions}, nil)
}

// HMP runs a human-monitor command and returns its output.
func (m *Monitor) HMP(ctx context.Context, line string) (string, error) {
	var out string
	err := m.Run(ctx, "human-monitor-command", map[string]any{"command-line": line}, &out)
	return out, err
}
