// Package nbd is a read-only client of the NBD protocol (fixed newstyle
// handshake, structured replies, metadata contexts) — enough to read a QEMU
// NBD export from user space and to ask it which extents are allocated
// ("base:allocation") or dirty in a bitmap ("qemu:dirty-bitmap:NAME").
// These machines have no /dev/nbd*, and Raksha never needs a kernel device.
//
// The protocol is specified in the NBD project's doc/proto.md.
package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"time"
)

const (
	nbdMagic         = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic         = 0x49484156454f5054 // "IHAVEOPT"
	optReplyMagic    = 0x0003e889045565a9
	requestMagic     = 0x25609513
	simpleReplyMagic = 0x67446698
	structReplyMagic = 0x668e33ef

	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	optGo             = 7
	optStructuredRepl = 8
	optSetMetaContext = 10

	repAck         = 1
	repInfo        = 3
	repMetaContext = 4
	repErrBit      = 1 << 31

	infoExport = 0

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	// transmission flags of an export
	tflagReadOnly    = 1 << 1
	tflagSendFlush   = 1 << 2
	tflagWriteZeroes = 1 << 6

	replyFlagDone     = 1 << 0
	replyNone         = 0
	replyOffsetData   = 1
	replyOffsetHole   = 2
	replyBlockStatus  = 5
	replyErrorBit     = 1 << 15
	maxRequestLength  = 32 << 20
	maxStatusRequest  = 1 << 30
	maxOptReplyLength = 1 << 20
	// maxErrorChunk bounds an error chunk: a code, a message of at most
	// 4096 bytes and an offset.
	maxErrorChunk = 4 + 2 + 4096 + 8
	// chunkAtOnce is the largest payload of a block status reply read
	// into a buffer of its announced length; a longer one grows with the
	// bytes that arrive.
	chunkAtOnce = 1 << 20
)

// State flags of the "base:allocation" context.
const (
	StateHole = 1 << 0
	StateZero = 1 << 1
)

// StateDirty is the flag of a "qemu:dirty-bitmap:NAME" context for dirty extents.
const StateDirty = 1 << 0

// ServerError is an error the server returned for a request or an option.
type ServerError struct {
	Op      string
	Code    uint32
	Message string
}

func (e *ServerError) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("nbd %s: server error %d: %s", e.Op, e.Code, e.Message)
	}
	return fmt.Sprintf("nbd %s: server error %d", e.Op, e.Code)
}

// ErrNoContext means the server does not offer a metadata context asked for
// (for a dirty bitmap: the bitmap is missing or not exported).
var ErrNoContext = errors.New("metadata context not offered by the server")

// Extent is a run of bytes with the same status flags.
type Extent struct {
	Offset, Length int64
	Flags          uint32
}

// Conn is one NBD connection to one export. Requests are serialized; open
// several connections to read in parallel. Safe for concurrent use.
type Conn struct {
	mu       sync.Mutex
	c        net.Conn
	size     int64
	tflags   uint16
	contexts map[string]uint32 // name → id
	handle   uint64
	broken   error
}

// Dial connects to an NBD server at a unix socket path ("unix:" URLs are the
// caller's business) or host:port (network "tcp"), negotiates structured
// replies and the given metadata contexts, and opens export.
func Dial(ctx context.Context, network, addr, export string, contexts []string) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd dial %s: %w", addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(30 * time.Second))
	}
	conn := &Conn{c: c, contexts: map[string]uint32{}}
	if err := conn.handshake(export, contexts); err != nil {
		c.Close()
		return nil, fmt.Errorf("nbd handshake with %s export %q: %w", addr, export, err)
	}
	c.SetDeadline(time.Time{})
	return conn, nil
}

func (c *Conn) handshake(export string, contexts []string) error {
	var hdr struct {
		Magic, Opt uint64
		Flags      uint16
	}
	if err := binary.Read(c.c, binary.BigEndian, &hdr); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if hdr.Magic != nbdMagic || hdr.Opt != optMagic {
		return fmt.Errorf("not a newstyle NBD server (magic %#x %#x)", hdr.Magic, hdr.Opt)
	}
	if hdr.Flags&flagFixedNewstyle == 0 {
		return errors.New("server does not speak fixed newstyle")
	}
	cflags := uint32(flagFixedNewstyle)
	if hdr.Flags&flagNoZeroes != 0 {
		cflags |= flagNoZeroes
	}
	if err := binary.Write(c.c, binary.BigEndian, cflags); err != nil {
		return err
	}
	// structured replies
	if err := c.sendOpt(optStructuredRepl, nil); err != nil {
		return err
	}
	typ, data, err := c.readOptReply(optStructuredRepl)
	if err != nil {
		return err
	}
	if typ != repAck {
		return fmt.Errorf("structured replies refused (reply %#x %q)", typ, data)
	}
	if len(contexts) > 0 {
		buf := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
		buf = append(buf, export...)
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(contexts)))
		for _, q := range contexts {
			buf = binary.BigEndian.AppendUint32(buf, uint32(len(q)))
			buf = append(buf, q...)
		}
		if err := c.sendOpt(optSetMetaContext, buf); err != nil {
			return err
		}
		for {
			typ, data, err := c.readOptReply(optSetMetaContext)
			if err != nil {
				return err
			}
			if typ == repAck {
				break
			}
			if typ != repMetaContext || len(data) < 4 {
				return fmt.Errorf("unexpected reply %#x to set-meta-context", typ)
			}
			c.contexts[string(data[4:])] = binary.BigEndian.Uint32(data)
		}
	}
	buf := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	buf = append(buf, export...)
	buf = binary.BigEndian.AppendUint16(buf, 0) // no extra info requests
	if err := c.sendOpt(optGo, buf); err != nil {
		return err
	}
	gotSize := false
	for {
		typ, data, err := c.readOptReply(optGo)
		if err != nil {
			return err
		}
		if typ == repAck {
			break
		}
		if typ == repInfo && len(data) >= 12 && binary.BigEndian.Uint16(data) == infoExport {
			size := binary.BigEndian.Uint64(data[2:])
			if size > math.MaxInt64 {
				return fmt.Errorf("option %d: the server announced an export of %d bytes, more than a disk can hold", optGo, size)
			}
			c.size = int64(size)
			c.tflags = binary.BigEndian.Uint16(data[10:])
			gotSize = true
		}
	}
	if !gotSize {
		return errors.New("server sent no export size")
	}
	return nil
}

func (c *Conn) sendOpt(opt uint32, data []byte) error {
	buf := binary.BigEndian.AppendUint64(nil, optMagic)
	buf = binary.BigEndian.AppendUint32(buf, opt)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(data)))
	buf = append(buf, data...)
	_, err := c.c.Write(buf)
	return err
}

func (c *Conn) readOptReply(opt uint32) (uint32, []byte, error) {
	var h struct {
		Magic     uint64
		Opt, Type uint32
		Len       uint32
	}
	if err := binary.Read(c.c, binary.BigEndian, &h); err != nil {
		return 0, nil, fmt.Errorf("read option reply: %w", err)
	}
	if h.Magic != optReplyMagic || h.Opt != opt {
		return 0, nil, fmt.Errorf("bad option reply (magic %#x, option %d, want %d)", h.Magic, h.Opt, opt)
	}
	if h.Len > maxOptReplyLength {
		return 0, nil, fmt.Errorf("option reply of %d bytes is too long", h.Len)
	}
	data := make([]byte, h.Len)
	if _, err := io.ReadFull(c.c, data); err != nil {
		return 0, nil, err
	}
	if h.Type&repErrBit != 0 {
		return 0, nil, &ServerError{Op: fmt.Sprintf("option %d", opt), Code: h.Type, Message: string(data)}
	}
	return h.Type, data, nil
}

// Size is the export's size in bytes.
func (c *Conn) Size() int64 { return c.size }

// HasContext reports whether the server agreed to a metadata context.
func (c *Conn) HasContext(name string) bool {
	_, ok := c.contexts[name]
	return ok
}

// ReadOnly reports whether the server exports the disk read-only.
func (c *Conn) ReadOnly() bool { return c.tflags&tflagReadOnly != 0 }

func (c *Conn) request(typ uint16, flags uint16, off int64, length uint32) (uint64, error) {
	return c.requestData(typ, flags, off, length, nil)
}

// requestData sends one request header followed by its payload (a write's
// data) in one gathered write (writev on a socket): the payload is sent
// from the caller's buffer, not copied behind the header first.
func (c *Conn) requestData(typ uint16, flags uint16, off int64, length uint32, data []byte) (uint64, error) {
	c.handle++
	buf := binary.BigEndian.AppendUint32(make([]byte, 0, 28), requestMagic)
	buf = binary.BigEndian.AppendUint16(buf, flags)
	buf = binary.BigEndian.AppendUint16(buf, typ)
	buf = binary.BigEndian.AppendUint64(buf, c.handle)
	buf = binary.BigEndian.AppendUint64(buf, uint64(off))
	buf = binary.BigEndian.AppendUint32(buf, length)
	if len(data) == 0 {
		_, err := c.c.Write(buf)
		return c.handle, err
	}
	bufs := net.Buffers{buf, data}
	_, err := bufs.WriteTo(c.c)
	return c.handle, err
}

// chunkLimit says how long a reply chunk to one request may be (max) and
// up to which length its payload is read into a buffer of that length at
// once (atOnce; a longer one grows with the bytes that arrive): a server
// announcing a length it does not send costs no memory.
//
// into, when set, takes a data chunk's bytes directly: given the chunk's
// offset and length it returns where they go, or nil when they fall outside
// the request (the chunk is then read and dropped, and the request fails).
type chunkLimit struct {
	max, atOnce uint32
	into        func(off uint64, n uint32) []byte
}

// replies reads the replies to one request until the last one, calling fn for
// each structured chunk (type, payload).
func (c *Conn) replies(op string, handle uint64, simpleData []byte, lim chunkLimit, fn func(typ uint16, payload []byte) error) error {
	var replyErr error
	for {
		var magic uint32
		if err := binary.Read(c.c, binary.BigEndian, &magic); err != nil {
			return err
		}
		switch magic {
		case simpleReplyMagic:
			var h struct {
				Err    uint32
				Handle uint64
			}
			if err := binary.Read(c.c, binary.BigEndian, &h); err != nil {
				return err
			}
			if h.Handle != handle {
				return fmt.Errorf("reply for handle %d, want %d", h.Handle, handle)
			}
			if h.Err != 0 {
				return &ServerError{Op: op, Code: h.Err}
			}
			if simpleData != nil {
				_, err := io.ReadFull(c.c, simpleData)
				return err
			}
			return nil
		case structReplyMagic:
			var h struct {
				Flags, Type uint16
				Handle      uint64
				Len         uint32
			}
			if err := binary.Read(c.c, binary.BigEndian, &h); err != nil {
				return err
			}
			if h.Handle != handle {
				return fmt.Errorf("reply for handle %d, want %d", h.Handle, handle)
			}
			if h.Len > max(lim.max, maxErrorChunk) {
				return fmt.Errorf("reply chunk of %d bytes is longer than a %s reply can be (%d)", h.Len, op, max(lim.max, maxErrorChunk))
			}
			if lim.into != nil && h.Type == replyOffsetData && h.Len >= 8 {
				// Data straight into the caller's buffer: no copy, no
				// allocation per chunk.
				var at uint64
				if err := binary.Read(c.c, binary.BigEndian, &at); err != nil {
					return err
				}
				n := h.Len - 8
				if dst := lim.into(at, n); dst != nil && replyErr == nil {
					if _, err := io.ReadFull(c.c, dst); err != nil {
						return fmt.Errorf("read %d-byte data chunk: %w", n, err)
					}
				} else {
					if _, err := io.CopyN(io.Discard, c.c, int64(n)); err != nil {
						return fmt.Errorf("read %d-byte data chunk: %w", n, err)
					}
					if replyErr == nil {
						replyErr = fmt.Errorf("read chunk outside the request")
					}
				}
				if h.Flags&replyFlagDone != 0 {
					return replyErr
				}
				continue
			}
			payload, err := c.readChunk(h.Len, max(lim.atOnce, maxErrorChunk))
			if err != nil {
				return fmt.Errorf("read %d-byte reply chunk: %w", h.Len, err)
			}
			if h.Type&replyErrorBit != 0 {
				se := &ServerError{Op: op}
				if len(payload) >= 6 {
					se.Code = binary.BigEndian.Uint32(payload)
					n := int(binary.BigEndian.Uint16(payload[4:]))
					if 6+n <= len(payload) {
						se.Message = string(payload[6 : 6+n])
					}
				}
				if replyErr == nil {
					replyErr = se
				}
			} else if h.Type != replyNone && replyErr == nil {
				if err := fn(h.Type, payload); err != nil {
					replyErr = err // keep reading to the final chunk
				}
			}
			if h.Flags&replyFlagDone != 0 {
				return replyErr
			}
		default:
			return fmt.Errorf("bad reply magic %#x", magic)
		}
	}
}

// readChunk reads a chunk's payload of n bytes: at once up to atOnce bytes,
// else into a buffer that grows as the bytes arrive.
func (c *Conn) readChunk(n, atOnce uint32) ([]byte, error) {
	if n <= atOnce {
		p := make([]byte, n)
		_, err := io.ReadFull(c.c, p)
		return p, err
	}
	var b bytes.Buffer
	if _, err := io.CopyN(&b, c.c, int64(n)); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// ReadAt reads len(p) bytes at off. It implements io.ReaderAt.
func (c *Conn) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > c.size {
		return 0, fmt.Errorf("nbd read %d bytes at %d: outside the export (%d bytes)", len(p), off, c.size)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return 0, c.broken
	}
	done := 0
	for done < len(p) {
		n := min(len(p)-done, maxRequestLength)
		if err := c.read(p[done:done+n], off+int64(done)); err != nil {
			var se *ServerError
			if !errors.As(err, &se) {
				c.broken = fmt.Errorf("nbd connection unusable after: %w", err)
			}
			return done, fmt.Errorf("nbd read %d bytes at %d: %w", n, off+int64(done), err)
		}
		done += n
	}
	return done, nil
}

func (c *Conn) read(p []byte, off int64) error {
	h, err := c.request(cmdRead, 0, off, uint32(len(p)))
	if err != nil {
		return err
	}
	// an offset and the data asked for, in one chunk at most
	lim := chunkLimit{max: 8 + uint32(len(p)), atOnce: 8 + uint32(len(p)),
		into: func(at uint64, n uint32) []byte {
			rel, ok := within(at, uint64(n), off, len(p))
			if !ok {
				return nil
			}
			return p[rel : rel+int(n)]
		}}
	return c.replies("read", h, p, lim, func(typ uint16, payload []byte) error {
		if len(payload) < 8 {
			return fmt.Errorf("short read chunk")
		}
		// Data chunks went straight into p (lim.into); holes come here.
		start := binary.BigEndian.Uint64(payload)
		switch typ {
		case replyOffsetHole:
			if len(payload) < 12 {
				return fmt.Errorf("short hole chunk")
			}
			n := binary.BigEndian.Uint32(payload[8:])
			rel, ok := within(start, uint64(n), off, len(p))
			if !ok {
				return fmt.Errorf("hole chunk outside the request")
			}
			clear(p[rel : rel+int(n)])
		default:
			return fmt.Errorf("unexpected reply type %d to a read", typ)
		}
		return nil
	})
}

// within says where a reply chunk of n bytes at the export's offset start
// begins in a request for size bytes at off (rel), and whether it lies inside
// that request. Written without sums that a server's values could overflow.
func within(start, n uint64, off int64, size int) (rel int, ok bool) {
	if off < 0 || start < uint64(off) {
		return 0, false
	}
	d := start - uint64(off)
	if d > uint64(size) || n > uint64(size)-d {
		return 0, false
	}
	return int(d), true
}

// ErrReadOnly means a write was asked of a read-only export.
var ErrReadOnly = errors.New("the NBD export is read-only")

// WriteAt writes p at off and returns once the server acknowledged it (the
// data is in the server's cache; Flush makes it durable). It implements
// io.WriterAt.
func (c *Conn) WriteAt(p []byte, off int64) (int, error) {
	if c.ReadOnly() {
		return 0, fmt.Errorf("nbd write at %d: %w", off, ErrReadOnly)
	}
	if off < 0 || off+int64(len(p)) > c.size {
		return 0, fmt.Errorf("nbd write %d bytes at %d: outside the export (%d bytes)", len(p), off, c.size)
	}
	done := 0
	for done < len(p) {
		n := min(len(p)-done, maxRequestLength)
		if err := c.simple("write", cmdWrite, off+int64(done), uint32(n), p[done:done+n]); err != nil {
			return done, fmt.Errorf("nbd write %d bytes at %d: %w", n, off+int64(done), err)
		}
		done += n
	}
	return done, nil
}

// WriteZeroes makes [off, off+length) read as zeros without sending them,
// letting the server deallocate the range. Servers without the command get
// zeros written.
func (c *Conn) WriteZeroes(off, length int64) error {
	if c.ReadOnly() {
		return fmt.Errorf("nbd write zeroes at %d: %w", off, ErrReadOnly)
	}
	if off < 0 || off+length > c.size {
		return fmt.Errorf("nbd write zeroes %d bytes at %d: outside the export (%d bytes)", length, off, c.size)
	}
	if c.tflags&tflagWriteZeroes == 0 {
		zero := make([]byte, min(length, 1<<20))
		for length > 0 {
			n := min(length, int64(len(zero)))
			if _, err := c.WriteAt(zero[:n], off); err != nil {
				return err
			}
			off, length = off+n, length-n
		}
		return nil
	}
	const step = 1 << 30
	for length > 0 {
		n := min(length, step)
		if err := c.simple("write zeroes", cmdWriteZeroes, off, uint32(n), nil); err != nil {
			return fmt.Errorf("nbd write zeroes %d bytes at %d: %w", n, off, err)
		}
		off, length = off+n, length-n
	}
	return nil
}

// Flush asks the server to make every acknowledged write durable.
func (c *Conn) Flush() error {
	if c.tflags&tflagSendFlush == 0 {
		return nil // the server writes through
	}
	if err := c.simple("flush", cmdFlush, 0, 0, nil); err != nil {
		return fmt.Errorf("nbd flush: %w", err)
	}
	return nil
}

// simple sends a request that carries no data back and waits for its reply.
func (c *Conn) simple(op string, typ uint16, off int64, length uint32, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return c.broken
	}
	h, err := c.requestData(typ, 0, off, length, data)
	if err == nil {
		err = c.replies(op, h, nil, chunkLimit{}, func(uint16, []byte) error { return fmt.Errorf("unexpected data in the reply to a %s", op) })
	}
	if err != nil {
		var se *ServerError
		if !errors.As(err, &se) {
			c.broken = fmt.Errorf("nbd connection unusable after: %w", err)
		}
	}
	return err
}

// BlockStatus returns the extents of [off, off+length) in metadata context
// name, covering the whole range (several requests if the server answers
// in parts).
func (c *Conn) BlockStatus(name string, off, length int64) ([]Extent, error) {
	id, ok := c.contexts[name]
	if !ok {
		return nil, fmt.Errorf("nbd block status %q: %w", name, ErrNoContext)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return nil, c.broken
	}
	var out []Extent
	end := off + length
	for off < end {
		n := min(end-off, maxStatusRequest)
		h, err := c.request(cmdBlockStatus, 0, off, uint32(n))
		if err != nil {
			c.broken = err
			return nil, err
		}
		pos := off
		lim := chunkLimit{max: maxRequestLength + 1024, atOnce: chunkAtOnce}
		err = c.replies("block status", h, nil, lim, func(typ uint16, payload []byte) error {
			if typ != replyBlockStatus || len(payload) < 4 {
				return fmt.Errorf("unexpected reply type %d to block status", typ)
			}
			if binary.BigEndian.Uint32(payload) != id {
				return nil // another context
			}
			for d := payload[4:]; len(d) >= 8; d = d[8:] {
				l := int64(binary.BigEndian.Uint32(d))
				fl := binary.BigEndian.Uint32(d[4:])
				l = min(l, end-pos)
				if l <= 0 {
					break
				}
				if k := len(out); k > 0 && out[k-1].Flags == fl && out[k-1].Offset+out[k-1].Length == pos {
					out[k-1].Length += l
				} else {
					out = append(out, Extent{Offset: pos, Length: l, Flags: fl})
				}
				pos += l
			}
			return nil
		})
		if err != nil {
			var se *ServerError
			if !errors.As(err, &se) {
				c.broken = err
			}
			return nil, fmt.Errorf("nbd block status %q at %d: %w", name, off, err)
		}
		if pos == off {
			return nil, fmt.Errorf("nbd block status %q at %d: the server described no bytes", name, off)
		}
		off = pos
	}
	return out, nil
}

// Close says goodbye and closes the connection.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken == nil {
		c.request(cmdDisc, 0, 0, 0)
	}
	c.broken = net.ErrClosed
	return c.c.Close()
}
