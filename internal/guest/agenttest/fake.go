// Package agenttest holds the shared test suite of guest.Agent
// implementations (Run) and a fake guest agent speaking qemu-ga's protocol
// on a unix socket (Fake), with faults to inject.
package agenttest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// Fake is an in-process stand-in for QEMU's chardev socket plus qemu-ga: it
// accepts one connection at a time (as QEMU does), handles 0xFF parser resets
// and guest-sync-delimited, and implements ping, info, fsfreeze
// status/freeze/freeze-list/thaw (refusing other commands while frozen with
// qemu-ga's words), get-fsinfo, and exec/exec-status by running the program
// on the host. The frozen state outlives connections, as in a real guest.
type Fake struct {
	// Path is the socket's path.
	Path string

	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	conn net.Conn

	frozen   bool
	frozenN  int // filesystems frozen
	delays   map[string]time.Duration
	silent   bool
	calls    map[string]int
	nextPID  int
	procs    map[int]*fakeProc
	numFS    int
	closedCh chan struct{}
}

type fakeProc struct {
	done           chan struct{}
	code           int
	stdout, stderr bytes.Buffer
}

// NewFake listens on path and serves until the test ends.
func NewFake(t testing.TB, path string) *Fake {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("fake agent: %v", err)
	}
	f := &Fake{Path: path, ln: ln, delays: map[string]time.Duration{}, calls: map[string]int{},
		procs: map[int]*fakeProc{}, nextPID: 1000, numFS: 2, closedCh: make(chan struct{})}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.Close)
	return f
}

// Close stops the fake and removes its socket.
func (f *Fake) Close() {
	select {
	case <-f.closedCh:
		return
	default:
	}
	close(f.closedCh)
	f.ln.Close()
	f.mu.Lock()
	if f.conn != nil {
		f.conn.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	os.Remove(f.Path)
}

// SetDelay makes the fake wait d before answering cmd (0 removes it).
func (f *Fake) SetDelay(cmd string, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delays[cmd] = d
}

// SetSilent makes the fake read and drop everything, answering nothing (an
// agent that is not running).
func (f *Fake) SetSilent(silent bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.silent = silent
}

// SetFrozen sets the frozen state directly (a guest left frozen).
func (f *Fake) SetFrozen(frozen bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen, f.frozenN = frozen, 0
	if frozen {
		f.frozenN = f.numFS
	}
}

// Frozen reports the frozen state.
func (f *Fake) Frozen() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.frozen
}

// Calls returns how many times cmd was received.
func (f *Fake) Calls(cmd string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[cmd]
}

func (f *Fake) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conn = c
		f.mu.Unlock()
		f.handle(c)
		c.Close()
	}
}

// allowedFrozen are the commands qemu-ga keeps enabled while frozen.
func allowedFrozen(cmd string) bool {
	switch cmd {
	case "guest-ping", "guest-info", "guest-sync", "guest-sync-delimited", "guest-fsfreeze-status", "guest-fsfreeze-thaw":
		return true
	}
	return false
}

func (f *Fake) handle(c net.Conn) {
	br := bufio.NewReader(c)
	var buf []byte
	for {
		b, err := br.ReadByte()
		if err != nil {
			return
		}
		switch b {
		case 0xff:
			buf = buf[:0] // parser reset
			continue
		case '\n':
		default:
			buf = append(buf, b)
			continue
		}
		line := bytes.TrimSpace(buf)
		buf = buf[:0]
		if len(line) == 0 {
			continue
		}
		f.mu.Lock()
		silent := f.silent
		f.mu.Unlock()
		if silent {
			continue
		}
		out := f.execute(line)
		if out != nil {
			if _, err := c.Write(out); err != nil {
				return
			}
		}
	}
}

type fakeReq struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
}

func reply(v any) []byte {
	b, _ := json.Marshal(map[string]any{"return": v})
	return append(b, '\n')
}

func replyErr(class, desc string) []byte {
	b, _ := json.Marshal(map[string]any{"error": map[string]string{"class": class, "desc": desc}})
	return append(b, '\n')
}

func (f *Fake) execute(line []byte) []byte {
	var req fakeReq
	if err := json.Unmarshal(line, &req); err != nil {
		return replyErr("GenericError", "JSON parse error, "+err.Error())
	}
	f.mu.Lock()
	f.calls[req.Execute]++
	d := f.delays[req.Execute]
	frozen := f.frozen
	f.mu.Unlock()
	if d > 0 {
		select {
		case <-time.After(d):
		case <-f.closedCh:
			return nil
		}
	}
	if frozen && !allowedFrozen(req.Execute) {
		return replyErr("CommandNotFound", fmt.Sprintf("Command %s has been disabled: the agent is in frozen state", req.Execute))
	}
	switch req.Execute {
	case "guest-sync-delimited", "guest-sync":
		var a struct {
			ID int64 `json:"id"`
		}
		_ = json.Unmarshal(req.Arguments, &a)
		r := reply(a.ID)
		if req.Execute == "guest-sync-delimited" {
			r = append([]byte{0xff}, r...)
		}
		return r
	case "guest-ping":
		return reply(struct{}{})
	case "guest-info":
		cmds := []map[string]any{}
		for _, n := range []string{"guest-ping", "guest-info", "guest-sync-delimited", "guest-fsfreeze-status", "guest-fsfreeze-freeze",
			"guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw", "guest-get-fsinfo", "guest-exec", "guest-exec-status"} {
			cmds = append(cmds, map[string]any{"name": n, "enabled": !frozen || allowedFrozen(n), "success-response": true})
		}
		return reply(map[string]any{"version": "fake-7.2", "supported_commands": cmds})
	case "guest-fsfreeze-status":
		if frozen {
			return reply("frozen")
		}
		return reply("thawed")
	case "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list":
		n := f.numFS
		if req.Execute == "guest-fsfreeze-freeze-list" {
			var a struct {
				Mountpoints []string `json:"mountpoints"`
			}
			_ = json.Unmarshal(req.Arguments, &a)
			if len(a.Mountpoints) > 0 {
				n = len(a.Mountpoints)
			}
		}
		f.mu.Lock()
		f.frozen, f.frozenN = true, n
		f.mu.Unlock()
		return reply(n)
	case "guest-fsfreeze-thaw":
		f.mu.Lock()
		n := 0
		if f.frozen {
			n = f.frozenN
		}
		f.frozen, f.frozenN = false, 0
		f.mu.Unlock()
		return reply(n)
	case "guest-get-fsinfo":
		return reply([]map[string]any{
			{"name": "vda", "mountpoint": "/data/a", "type": "ext4", "disk": []map[string]any{{"bus-type": "virtio", "bus": 0, "target": 0, "unit": 0, "dev": "/dev/vda"}}},
			{"name": "vdb", "mountpoint": "/data/b", "type": "ext4", "disk": []map[string]any{{"bus-type": "virtio", "bus": 0, "target": 0, "unit": 0, "dev": "/dev/vdb"}}},
		})
	case "guest-exec":
		return f.exec(req.Arguments)
	case "guest-exec-status":
		var a struct {
			PID int `json:"pid"`
		}
		_ = json.Unmarshal(req.Arguments, &a)
		f.mu.Lock()
		p := f.procs[a.PID]
		f.mu.Unlock()
		if p == nil {
			return replyErr("GenericError", "Invalid parameter 'pid'")
		}
		select {
		case <-p.done:
		default:
			return reply(map[string]any{"exited": false})
		}
		f.mu.Lock()
		delete(f.procs, a.PID)
		f.mu.Unlock()
		return reply(map[string]any{"exited": true, "exitcode": p.code,
			"out-data": base64.StdEncoding.EncodeToString(p.stdout.Bytes()),
			"err-data": base64.StdEncoding.EncodeToString(p.stderr.Bytes())})
	}
	return replyErr("CommandNotFound", fmt.Sprintf("The command %s has not been found", req.Execute))
}

func (f *Fake) exec(args json.RawMessage) []byte {
	var a struct {
		Path    string   `json:"path"`
		Arg     []string `json:"arg"`
		Env     []string `json:"env"`
		Input   string   `json:"input-data"`
		Capture bool     `json:"capture-output"`
	}
	if err := json.Unmarshal(args, &a); err != nil {
		return replyErr("GenericError", err.Error())
	}
	in, err := base64.StdEncoding.DecodeString(a.Input)
	if err != nil {
		return replyErr("GenericError", err.Error())
	}
	p := &fakeProc{done: make(chan struct{})}
	cmd := exec.CommandContext(context.Background(), a.Path, a.Arg...)
	cmd.Env = append(os.Environ(), a.Env...)
	cmd.Stdin = bytes.NewReader(in)
	if a.Capture {
		cmd.Stdout, cmd.Stderr = &p.stdout, &p.stderr
	}
	if err := cmd.Start(); err != nil {
		return replyErr("GenericError", fmt.Sprintf("Guest agent command failed, error was 'Failed to execute child process “%s” (%v)'", a.Path, err))
	}
	f.mu.Lock()
	f.nextPID++
	pid := f.nextPID
	f.procs[pid] = p
	f.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			p.code = 127
		}
		close(p.done)
	}()
	return reply(map[string]int{"pid": pid})
}
