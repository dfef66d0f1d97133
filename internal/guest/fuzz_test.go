package guest

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// FuzzAgentReplies plays fuzzed bytes as a guest agent's side of the
// channel: the client syncs (guest-sync-delimited, ids from 1) and sends
// every command it has; the agent's bytes answer them. A hostile guest
// writes what it likes there. The client must return values or errors with
// a message, never panic, never wait once the agent has hung up (its
// bytes are all sent: waiting for the deadline is a hang), and allocate in
// proportion to what the agent sent.
func FuzzAgentReplies(f *testing.F) {
	ok := strings.Join([]string{
		"\xff{\"return\": 1}",
		`{"return": {}}`, // guest-ping
		`{"return": {"version": "8.2.0", "supported_commands": [{"name": "guest-ping", "enabled": true, "success-response": true}]}}`,
		`{"return": "thawed"}`,
		`{"return": [{"name": "vda1", "mountpoint": "/", "type": "ext4", "used-bytes": 100, "total-bytes": 1000, "disk": [{"serial": "abc", "bus-type": "virtio", "bus": 0, "target": 0, "unit": 0}]}]}`,
		`{"return": 2}`, // freeze
		`{"return": 2}`, // thaw
		`{"return": {"pid": 42}}`,
		`{"return": {"exited": true, "exitcode": 0, "out-data": "aGk=", "err-data": ""}}`,
	}, "\n") + "\n"
	f.Add([]byte(ok))
	// stale replies and garbage before the sync's own reply
	f.Add([]byte("{\"return\": 7}\n\xff{\"return\": 0}\ngarbage\xff\xff{\"return\": 1}\n{\"return\": {}}\n"))
	// error replies, an undecodable one, then a resync (id 2)
	f.Add([]byte("\xff{\"return\": 1}\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"frozen\"}}\n" +
		"{\"return\": {\"version\": 3}}\n\xff{\"return\": 2}\n{\"return\": \"frozen\"}\n{\"neither\": 1}\n"))
	f.Add([]byte("\xff{\"return\": 1}\n{\"return\": {\"exited\": true, \"out-data\": \"!!\"}}\n"))
	f.Fuzz(func(t *testing.T, script []byte) {
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		playAgent(t, script)
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20+64*uint64(len(script)) {
			t.Fatalf("allocated %d bytes for an agent that sent %d", alloc, len(script))
		}
	})
}

// socketPair returns the two ends of a connected pair of unix sockets (a
// net.Pipe cannot be half-closed: the agent hangs up its sending side and
// keeps reading).
func socketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	end := func(fd int, name string) *net.UnixConn {
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return end(fds[0], "client"), end(fds[1], "agent")
}

// playAgent runs every command of a client against an agent that sends
// script, reads (and drops) what the client sends, and hangs up when done.
func playAgent(t *testing.T, script []byte) {
	cli, agent := socketPair(t)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _, _ = io.Copy(io.Discard, agent) }()
	go func() { defer wg.Done(); _, _ = agent.Write(script); _ = agent.CloseWrite() }()
	defer func() { cli.Close(); wg.Wait(); agent.Close() }()
	log := slog.New(slog.DiscardHandler)
	// After a hang-up the transport reconnects to its path: a name that
	// is no socket, so that fails at once.
	s := &socketTransport{path: "fuzz-agent-not-a-socket", log: log, conn: cli,
		br: bufio.NewReaderSize(cli, 64*1024), needSync: true, nextID: 1}
	c := &Client{path: s.path, opts: Options{CallTimeout: 10 * time.Second}, log: log, t: s}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	check := func(err error) {
		t.Helper()
		if err == nil {
			return
		}
		if errors.Is(err, ErrTimeout) {
			t.Fatalf("the client waited for more than the agent sent: %v", err)
		}
		if !strings.Contains(err.Error(), s.path) {
			t.Fatalf("error %q does not name the agent", err)
		}
	}
	check(c.Ping(ctx))
	_, err := c.Info(ctx)
	check(err)
	_, err = c.FsfreezeStatus(ctx)
	check(err)
	_, err = c.GetFSInfo(ctx)
	check(err)
	_, err = c.FsfreezeFreeze(ctx, nil)
	check(err)
	_, err = c.FsfreezeThaw(ctx)
	check(err)
	_, err = c.Exec(ctx, ExecRequest{Path: "/bin/true"})
	check(err)
	_, err = c.ExecStatus(ctx, 42)
	check(err)
}
