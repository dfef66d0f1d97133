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
	"syscall"
	"time"
)

// maxReply bounds one reply line (guest-exec-status can carry up to 16 MiB of
// output per stream, base64-encoded).
const maxReply = 64 << 20

// A sync reads at most maxSyncDiscard bytes of stale output and
// maxSyncReplies stale replies before its own reply: a guest that floods its
// agent channel cannot grow the worker's memory or keep a sync busy until
// its deadline.
const (
	maxSyncDiscard = 4 << 20
	maxSyncReplies = 64
)

// ErrAgentFlood is returned (wrapped) when a sync found more than
// maxSyncDiscard bytes or maxSyncReplies stale replies before its reply.
var ErrAgentFlood = errors.New("the guest agent sent more before its sync reply than a sync reads")

// socketTransport speaks qemu-ga's protocol on the host side of the agent's
// virtio-serial channel, a unix socket: it (re)connects and resynchronises
// with guest-sync-delimited whenever the stream may hold stale replies.
type socketTransport struct {
	path     string
	log      *slog.Logger
	conn     net.Conn
	br       *bufio.Reader
	needSync bool
	nextID   uint32
}

func newSocketTransport(path string, log *slog.Logger) *socketTransport {
	if log == nil {
		log = slog.Default()
	}
	var id [4]byte
	_, _ = rand.Read(id[:])
	return &socketTransport{path: path, log: log.With("agent", path), needSync: true,
		nextID: binary.LittleEndian.Uint32(id[:])&0x3fffffff + 1}
}

func (s *socketTransport) Name() string { return s.path }

func (s *socketTransport) Close() error {
	if s.conn != nil {
		err := s.conn.Close()
		s.conn = nil
		return err
	}
	return nil
}

type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
}

type reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// Call sends one command on the socket and reads its reply.
func (s *socketTransport) Call(ctx context.Context, cmd string, args json.RawMessage) (json.RawMessage, error) {
	if err := s.connect(ctx); err != nil {
		if s.conn != nil && s.needSync {
			s.conn.Close()
			s.conn = nil
		}
		return nil, err
	}
	msg, err := json.Marshal(request{Execute: cmd, Arguments: args})
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	var r reply
	err = s.withDeadline(ctx, func() error {
		if _, err := s.conn.Write(append(msg, '\n')); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		line, err := s.readLine()
		if err != nil {
			return err
		}
		return decodeReply(line, &r)
	})
	if err != nil {
		s.needSync = true
		return nil, err
	}
	if r.Error != nil {
		return nil, &CommandError{Command: cmd, Class: r.Error.Class, Desc: r.Error.Desc}
	}
	return r.Return, nil
}

// decodeReply decodes one reply line of the agent, which must hold a
// "return" or an "error".
func decodeReply(line []byte, r *reply) error {
	if err := json.Unmarshal(line, r); err != nil {
		return fmt.Errorf("decode reply %q: %w", Redact(string(truncate(line, 200))), err)
	}
	if r.Return == nil && r.Error == nil {
		return fmt.Errorf("reply %q has neither return nor error", Redact(string(truncate(line, 200))))
	}
	return nil
}

// connect (re)connects and syncs.
func (s *socketTransport) connect(ctx context.Context) error {
	if s.conn == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", s.path)
		if err != nil {
			return fmt.Errorf("connect: %w: %w", ErrNotAnswering, err)
		}
		s.conn = conn
		s.br = bufio.NewReaderSize(conn, 64*1024)
		s.needSync = true
	}
	if s.needSync {
		if err := s.withDeadline(ctx, s.sync); err != nil {
			if errors.Is(err, ErrTimeout) {
				return fmt.Errorf("guest-sync-delimited: %w: %w", ErrNotAnswering, err)
			}
			return fmt.Errorf("guest-sync-delimited: %w", err)
		}
		s.needSync = false
	}
	return nil
}

// withDeadline runs f with the connection's deadline set from ctx, and
// interrupts it when ctx is cancelled. Errors from a deadline are mapped to
// ErrTimeout (and ctx's error); a broken connection is dropped so the next
// call reconnects.
func (s *socketTransport) withDeadline(ctx context.Context, f func() error) error {
	conn := s.conn
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
	s.needSync = true
	if errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil {
		cause := ctx.Err()
		if cause == nil {
			cause = context.DeadlineExceeded
		}
		return fmt.Errorf("%w: %w", ErrTimeout, cause)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) {
		s.conn.Close()
		s.conn = nil
	}
	return err
}

// sync sends 0xFF (which resets the agent's JSON parser) and
// guest-sync-delimited with a fresh id, then discards everything up to a
// 0xFF-delimited reply carrying that id (stale replies of earlier, timed-out
// commands and syncs are skipped).
func (s *socketTransport) sync() error {
	id := s.nextID
	s.nextID++
	msg := fmt.Sprintf("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id)
	if _, err := io.WriteString(s.conn, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	discarded := 0
	for replies := 0; ; replies++ {
		if replies > maxSyncReplies {
			return fmt.Errorf("read: %w (%d stale replies)", ErrAgentFlood, replies)
		}
		// Up to the next 0xFF, discarded without being kept.
		for {
			chunk, err := s.br.ReadSlice(0xff)
			discarded += len(chunk)
			if discarded > maxSyncDiscard {
				return fmt.Errorf("read: %w (%d bytes)", ErrAgentFlood, discarded)
			}
			if err == nil {
				break
			}
			if !errors.Is(err, bufio.ErrBufferFull) {
				return fmt.Errorf("read: %w", err)
			}
		}
		line, err := s.readLineMax(maxSyncDiscard)
		if err != nil {
			return err
		}
		discarded += len(line)
		var r struct {
			Return *uint32 `json:"return"`
		}
		if json.Unmarshal(line, &r) == nil && r.Return != nil && *r.Return == id {
			return nil
		}
		s.log.Debug("sync: skipped stale reply", "reply", string(truncate(line, 200)))
	}
}

// readLine reads one reply line (qemu-ga ends every reply with '\n'),
// without leading 0xFF bytes or surrounding blanks; empty lines are skipped.
func (s *socketTransport) readLine() ([]byte, error) { return s.readLineMax(maxReply) }

// readLineMax is readLine for a reply of at most limit bytes.
func (s *socketTransport) readLineMax(limit int) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := s.br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > limit {
			return nil, fmt.Errorf("read: reply longer than %d bytes", limit)
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
