package nbd

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// server builds the byte stream an NBD server sends: the handshake's
// replies, then the replies to the requests FuzzConn makes.
type server []byte

func (s server) u16(v uint16) server { return binary.BigEndian.AppendUint16(s, v) }
func (s server) u32(v uint32) server { return binary.BigEndian.AppendUint32(s, v) }
func (s server) u64(v uint64) server { return binary.BigEndian.AppendUint64(s, v) }

func (s server) optReply(opt, typ uint32, data []byte) server {
	return append(s.u64(optReplyMagic).u32(opt).u32(typ).u32(uint32(len(data))), data...)
}

func (s server) chunk(flags, typ uint16, handle uint64, payload []byte) server {
	return append(s.u32(structReplyMagic).u16(flags).u16(typ).u64(handle).u32(uint32(len(payload))), payload...)
}

// handshake is a newstyle greeting, structured replies and the
// base:allocation context agreed, and an export of size bytes.
func handshake(size uint64, tflags uint16) server {
	s := server(nil).u64(nbdMagic).u64(optMagic).u16(flagFixedNewstyle | flagNoZeroes)
	s = s.optReply(optStructuredRepl, repAck, nil)
	s = s.optReply(optSetMetaContext, repMetaContext, append(server(nil).u32(1), "base:allocation"...))
	s = s.optReply(optSetMetaContext, repAck, nil)
	info := server(nil).u16(infoExport).u64(size).u16(tflags)
	s = s.optReply(optGo, repInfo, info)
	return s.optReply(optGo, repAck, nil)
}

// FuzzConn plays a fuzzed server's bytes to the client over a pipe: the
// handshake, then a read, a block status, a write, a flush. The client
// must return errors (never panic or wait for more once the server is
// gone), keep allocations bounded by what the server sent, and what it
// accepts must make sense: reads of the asked length, extents that tile
// the range asked.
func FuzzConn(f *testing.F) {
	const size = 1 << 20
	hs := handshake(size, tflagSendFlush)
	// read (handle 1): a data chunk and a hole chunk
	ok := hs.chunk(0, replyOffsetData, 1, append(server(nil).u64(0), make([]byte, 2048)...))
	ok = ok.chunk(replyFlagDone, replyOffsetHole, 1, server(nil).u64(2048).u32(2048))
	// block status (handle 2): two extents
	ok = ok.chunk(replyFlagDone, replyBlockStatus, 2, server(nil).u32(1).u32(4096).u32(0).u32(size-4096).u32(StateHole|StateZero))
	// write (handle 3) and flush (handle 4): simple replies
	ok = ok.u32(simpleReplyMagic).u32(0).u64(3)
	ok = ok.u32(simpleReplyMagic).u32(0).u64(4)
	f.Add([]byte(ok))
	// a simple reply to the read, an error chunk to the block status
	simple := append(hs.u32(simpleReplyMagic).u32(0).u64(1), make([]byte, 4096)...)
	msg := "no such bitmap"
	simple = simple.chunk(replyFlagDone, replyErrorBit|1, 2, append(server(nil).u32(22).u16(uint16(len(msg))), msg...))
	f.Add([]byte(simple))
	// an option refused, a read-only export, a bad magic
	f.Add([]byte(server(nil).u64(nbdMagic).u64(optMagic).u16(flagFixedNewstyle).optReply(optStructuredRepl, repErrBit|1, []byte("no"))))
	f.Add([]byte(handshake(size, tflagReadOnly).u32(0xdeadbeef)))
	f.Fuzz(func(t *testing.T, script []byte) {
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		playServer(t, script)
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20+64*uint64(len(script)) {
			t.Fatalf("allocated %d bytes for a server that sent %d", alloc, len(script))
		}
	})
}

// playServer runs the client against a server that sends script, reads
// (and drops) what the client sends, and hangs up when done.
func playServer(t *testing.T, script []byte) {
	cli, srv := net.Pipe()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _, _ = io.Copy(io.Discard, srv) }()
	go func() { defer wg.Done(); _, _ = srv.Write(script); srv.Close() }()
	defer func() { cli.Close(); wg.Wait() }()
	// The script is finite and the server hangs up after it: waiting
	// until this deadline is a hang.
	cli.SetDeadline(time.Now().Add(10 * time.Second))
	c := &Conn{c: cli, contexts: map[string]uint32{}}
	if err := c.handshake("disk", []string{"base:allocation"}); err != nil {
		checkErr(t, err)
		return
	}
	if c.Size() < 0 {
		t.Fatalf("accepted an export of %d bytes", c.Size())
	}
	exercise(t, c)
}

// exercise makes a read, a block status, a write and a flush on an open
// connection and checks what comes back.
func exercise(t *testing.T, c *Conn) {
	p := make([]byte, min(c.Size(), 4096))
	if n, err := c.ReadAt(p, 0); err != nil {
		checkErr(t, err)
	} else if n != len(p) {
		t.Fatalf("read %d bytes of %d without an error", n, len(p))
	}
	if c.HasContext("base:allocation") {
		length := min(c.Size(), 1<<20)
		ext, err := c.BlockStatus("base:allocation", 0, length)
		if err != nil {
			checkErr(t, err)
		} else {
			pos := int64(0)
			for _, e := range ext {
				if e.Offset != pos || e.Length <= 0 {
					t.Fatalf("extents do not tile [0, %d): %+v", length, ext)
				}
				pos += e.Length
			}
			if pos != length && length > 0 {
				t.Fatalf("extents cover %d of %d bytes: %+v", pos, length, ext)
			}
		}
	}
	if !c.ReadOnly() && c.Size() >= 16 {
		if _, err := c.WriteAt([]byte("sixteen bytes!!!"), 0); err != nil {
			checkErr(t, err)
		}
	}
	if err := c.Flush(); err != nil {
		checkErr(t, err)
	}
}

// checkErr fails on an error that is a hang (the pipe's deadline) or has
// no message.
func checkErr(t *testing.T, err error) {
	t.Helper()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the client waited for more than the server sent: %v", err)
	}
	if err.Error() == "" {
		t.Fatal("an empty error message")
	}
}

// readFrom plays script (after the handshake of a 1 MiB export) to a client
// and reads 4096 bytes at off from it.
func readFrom(t *testing.T, script server, off int64) ([]byte, error) {
	t.Helper()
	cli, srv := net.Pipe()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _, _ = io.Copy(io.Discard, srv) }()
	go func() {
		defer wg.Done()
		_, _ = srv.Write(append(handshake(1<<20, tflagReadOnly), script...))
		srv.Close()
	}()
	defer func() { cli.Close(); wg.Wait() }()
	cli.SetDeadline(time.Now().Add(10 * time.Second))
	c := &Conn{c: cli, contexts: map[string]uint32{}}
	if err := c.handshake("disk", []string{"base:allocation"}); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	_, err := c.ReadAt(p, off)
	return p, err
}

// TestReadReplyChunks: data chunks land where their offsets say, in any
// order, straight in the caller's buffer; chunks outside the request,
// including offsets whose sums overflow, are errors, not panics.
func TestReadReplyChunks(t *testing.T) {
	const off = 8192
	data := func(at uint64, b []byte) []byte { return append(server(nil).u64(at), b...) }
	a, b := make([]byte, 1024), make([]byte, 3072)
	for i := range a {
		a[i] = 'a'
	}
	for i := range b {
		b[i] = 'b'
	}
	// the second part first, then a hole, then the first part
	script := server(nil).chunk(0, replyOffsetData, 1, data(off+1024, b[:2048]))
	script = script.chunk(0, replyOffsetHole, 1, server(nil).u64(off+3072).u32(1024))
	script = script.chunk(replyFlagDone, replyOffsetData, 1, data(off, a))
	p, err := readFrom(t, script, off)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append(append([]byte(nil), a...), b[:2048]...), make([]byte, 1024)...)
	if string(p) != string(want) {
		t.Fatalf("read %q..., want %q...", p[:16], want[:16])
	}
	for _, tc := range []struct {
		name   string
		script server
		want   string
	}{
		{"data before the request", server(nil).chunk(replyFlagDone, replyOffsetData, 1, data(off-1, make([]byte, 16))), "read chunk outside the request"},
		{"data past its end", server(nil).chunk(replyFlagDone, replyOffsetData, 1, data(off+4090, make([]byte, 16))), "read chunk outside the request"},
		{"data at an overflowing offset", server(nil).chunk(replyFlagDone, replyOffsetData, 1, data(1<<64-8, make([]byte, 16))), "read chunk outside the request"},
		{"hole at an overflowing offset", server(nil).chunk(replyFlagDone, replyOffsetHole, 1, server(nil).u64(1<<63-1).u32(1<<32-1)), "hole chunk outside the request"},
		{"hole longer than the request", server(nil).chunk(replyFlagDone, replyOffsetHole, 1, server(nil).u64(off).u32(1<<31)), "hole chunk outside the request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readFrom(t, tc.script, off)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
