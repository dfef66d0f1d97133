package guest

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Agent is the guest agent seam: the commands Raksha uses. *Client is the
// implementation over a unix socket; a libvirt pass-through (production
// hosts) would be another. agenttest.Run is the suite every implementation
// passes.
type Agent interface {
	// Ping succeeds when the agent answers guest-ping.
	Ping(ctx context.Context) error
	// Info returns the agent's version and commands (guest-info).
	Info(ctx context.Context) (*Info, error)
	// FsfreezeStatus returns Thawed or Frozen (guest-fsfreeze-status).
	FsfreezeStatus(ctx context.Context) (FreezeStatus, error)
	// FsfreezeFreeze freezes every freezable filesystem, or only those
	// mounted at mountpoints when given (guest-fsfreeze-freeze[-list]), and
	// returns how many it froze. The guest's fsfreeze hook runs first.
	FsfreezeFreeze(ctx context.Context, mountpoints []string) (int, error)
	// FsfreezeThaw thaws the frozen filesystems (guest-fsfreeze-thaw) and
	// returns how many it thawed; the guest's fsfreeze hook runs after.
	FsfreezeThaw(ctx context.Context) (int, error)
	// GetFSInfo lists the guest's mounted filesystems (guest-get-fsinfo).
	GetFSInfo(ctx context.Context) ([]FSInfo, error)
	// Exec starts a program in the guest (guest-exec) and returns its PID.
	Exec(ctx context.Context, req ExecRequest) (int, error)
	// ExecStatus polls a program started by Exec (guest-exec-status).
	ExecStatus(ctx context.Context, pid int) (*ExecStatus, error)
}

var _ Agent = (*Client)(nil)

// FreezeStatus is the state guest-fsfreeze-status reports.
type FreezeStatus string

// The states of guest-fsfreeze-status.
const (
	Thawed FreezeStatus = "thawed"
	Frozen FreezeStatus = "frozen"
)

// Info is guest-info's reply.
type Info struct {
	Version  string        `json:"version"`
	Commands []InfoCommand `json:"supported_commands"`
}

// InfoCommand is one command of guest-info.
type InfoCommand struct {
	Name            string `json:"name"`
	Enabled         bool   `json:"enabled"`
	SuccessResponse bool   `json:"success-response"`
}

// Enabled reports whether the agent lists cmd as supported and enabled.
func (i *Info) Enabled(cmd string) bool {
	for _, c := range i.Commands {
		if c.Name == cmd {
			return c.Enabled
		}
	}
	return false
}

// FSInfo is one filesystem of guest-get-fsinfo.
type FSInfo struct {
	Name       string   `json:"name"`
	Mountpoint string   `json:"mountpoint"`
	Type       string   `json:"type"`
	UsedBytes  *uint64  `json:"used-bytes,omitempty"`
	TotalBytes *uint64  `json:"total-bytes,omitempty"`
	Disks      []FSDisk `json:"disk"`
}

// FSDisk is a disk under a filesystem of guest-get-fsinfo.
type FSDisk struct {
	Serial  string `json:"serial,omitempty"`
	Dev     string `json:"dev,omitempty"`
	BusType string `json:"bus-type"`
	Bus     int    `json:"bus"`
	Target  int    `json:"target"`
	Unit    int    `json:"unit"`
}

// ExecRequest is a program to run in the guest.
type ExecRequest struct {
	// Path is the program; the agent searches PATH for a bare name.
	Path string `json:"path"`
	// Args are its arguments (without argv[0]).
	Args []string `json:"arg,omitempty"`
	// Env holds extra NAME=value environment entries.
	Env []string `json:"env,omitempty"`
	// Input is sent to its standard input.
	Input []byte `json:"-"`
	// Capture asks for its standard output and error.
	Capture bool `json:"capture-output,omitempty"`
}

// ExecStatus is guest-exec-status's reply, output decoded.
type ExecStatus struct {
	// Exited is false while the program runs.
	Exited bool
	// ExitCode is its exit status, when it exited normally.
	ExitCode *int
	// Signal is the signal that ended it, when one did.
	Signal *int
	// Stdout and Stderr are its output, when captured.
	Stdout, Stderr []byte
	// StdoutTruncated and StderrTruncated: the agent cut the output (16 MiB).
	StdoutTruncated, StderrTruncated bool
}

// ExecResult is the outcome of Run.
type ExecResult struct {
	// PID is the program's PID in the guest.
	PID int
	// ExitCode is its exit status (-1 when a signal ended it).
	ExitCode int
	// Signal is the signal that ended it (0: none).
	Signal int
	// Stdout and Stderr are its output (when captured).
	Stdout, Stderr []byte
	// Duration is the time from guest-exec sent to the exit seen.
	Duration time.Duration
}

// Ping succeeds when the agent answers guest-ping before ctx's deadline.
func (c *Client) Ping(ctx context.Context) error {
	return c.call(ctx, "guest-ping", nil, nil)
}

// Info returns guest-info's reply.
func (c *Client) Info(ctx context.Context) (*Info, error) {
	var i Info
	if err := c.call(ctx, "guest-info", nil, &i); err != nil {
		return nil, err
	}
	return &i, nil
}

// FsfreezeStatus returns Thawed or Frozen.
func (c *Client) FsfreezeStatus(ctx context.Context) (FreezeStatus, error) {
	var s FreezeStatus
	if err := c.call(ctx, "guest-fsfreeze-status", nil, &s); err != nil {
		return "", err
	}
	return s, nil
}

// FsfreezeFreeze freezes the guest's filesystems (those mounted at
// mountpoints, when given) and returns how many it froze. It is the bare
// command: Freeze adds the guard, the lock discipline and hooks. A guest
// already frozen fails with ErrAlreadyFrozen.
func (c *Client) FsfreezeFreeze(ctx context.Context, mountpoints []string) (int, error) {
	var n int
	var err error
	if len(mountpoints) > 0 {
		err = c.call(ctx, "guest-fsfreeze-freeze-list", map[string]any{"mountpoints": mountpoints}, &n)
	} else {
		err = c.call(ctx, "guest-fsfreeze-freeze", nil, &n)
	}
	return n, err
}

// FsfreezeThaw thaws the guest's filesystems and returns how many it thawed
// (0 when none was frozen).
func (c *Client) FsfreezeThaw(ctx context.Context) (int, error) {
	var n int
	err := c.call(ctx, "guest-fsfreeze-thaw", nil, &n)
	return n, err
}

// GetFSInfo lists the guest's filesystems.
func (c *Client) GetFSInfo(ctx context.Context) ([]FSInfo, error) {
	var fs []FSInfo
	if err := c.call(ctx, "guest-get-fsinfo", nil, &fs); err != nil {
		return nil, err
	}
	return fs, nil
}

// Exec starts req in the guest and returns its PID. While the guest is frozen
// the agent refuses it (ErrCommandDisabled, ErrFrozen).
func (c *Client) Exec(ctx context.Context, req ExecRequest) (int, error) {
	args := struct {
		ExecRequest
		InputData string `json:"input-data,omitempty"`
	}{ExecRequest: req}
	if len(req.Input) > 0 {
		args.InputData = base64.StdEncoding.EncodeToString(req.Input)
	}
	var r struct {
		PID int `json:"pid"`
	}
	if err := c.call(ctx, "guest-exec", args, &r); err != nil {
		return 0, err
	}
	return r.PID, nil
}

// ExecStatus polls a program started by Exec. Once it reports Exited the
// agent forgets the PID.
func (c *Client) ExecStatus(ctx context.Context, pid int) (*ExecStatus, error) {
	var r struct {
		Exited       bool   `json:"exited"`
		ExitCode     *int   `json:"exitcode"`
		Signal       *int   `json:"signal"`
		OutData      string `json:"out-data"`
		ErrData      string `json:"err-data"`
		OutTruncated bool   `json:"out-truncated"`
		ErrTruncated bool   `json:"err-truncated"`
	}
	if err := c.call(ctx, "guest-exec-status", map[string]int{"pid": pid}, &r); err != nil {
		return nil, err
	}
	st := &ExecStatus{Exited: r.Exited, ExitCode: r.ExitCode, Signal: r.Signal,
		StdoutTruncated: r.OutTruncated, StderrTruncated: r.ErrTruncated}
	var err error
	if st.Stdout, err = base64.StdEncoding.DecodeString(r.OutData); err != nil {
		return nil, fmt.Errorf("guest agent %s: guest-exec-status: decode out-data: %w", c.path, err)
	}
	if st.Stderr, err = base64.StdEncoding.DecodeString(r.ErrData); err != nil {
		return nil, fmt.Errorf("guest agent %s: guest-exec-status: decode err-data: %w", c.path, err)
	}
	return st, nil
}

// Run runs req in the guest to its end (Exec, then ExecStatus polled with a
// growing pause) and returns its exit status and output. A non-zero exit is
// not an error. When ctx ends first, Run sends `kill -KILL PID` to the guest
// (best effort) and fails with ErrTimeout.
func (c *Client) Run(ctx context.Context, req ExecRequest) (*ExecResult, error) {
	return run(ctx, c, req)
}

// run implements Run over any Agent.
func run(ctx context.Context, a Agent, req ExecRequest) (*ExecResult, error) {
	start := time.Now()
	pid, err := a.Exec(ctx, req)
	if err != nil {
		return nil, err
	}
	pause := 10 * time.Millisecond
	for {
		st, err := a.ExecStatus(ctx, pid)
		if err != nil {
			if ctx.Err() != nil {
				killGuestProcess(a, pid)
				if !errors.Is(err, ErrTimeout) {
					err = fmt.Errorf("%w: %w", ErrTimeout, err)
				}
			}
			return nil, fmt.Errorf("run %s in the guest (pid %d): %w", req.Path, pid, err)
		}
		if st.Exited {
			res := &ExecResult{PID: pid, ExitCode: -1, Stdout: st.Stdout, Stderr: st.Stderr, Duration: time.Since(start)}
			if st.ExitCode != nil {
				res.ExitCode = *st.ExitCode
			}
			if st.Signal != nil {
				res.Signal = *st.Signal
			}
			return res, nil
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			killGuestProcess(a, pid)
			return nil, fmt.Errorf("run %s in the guest (pid %d): %w: %w", req.Path, pid, ErrTimeout, ctx.Err())
		case <-t.C:
		}
		if pause < 200*time.Millisecond {
			pause *= 2
		}
	}
}

// killGuestProcess sends SIGKILL to pid in the guest and reaps it, best effort.
func killGuestProcess(a Agent, pid int) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if kpid, err := a.Exec(ctx, ExecRequest{Path: "kill", Args: []string{"-KILL", strconv.Itoa(pid)}}); err == nil {
		_, _ = a.ExecStatus(ctx, kpid)
	}
	_, _ = a.ExecStatus(ctx, pid)
}
