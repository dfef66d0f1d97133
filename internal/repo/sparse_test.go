package repo

import (
	"bytes"
	"testing"
)

type recordingWriter struct {
	buf    []byte
	writes int
	bytes  int64
}

func (w *recordingWriter) WriteAt(p []byte, off int64) (int, error) {
	w.writes++
	w.bytes += int64(len(p))
	copy(w.buf[off:], p)
	return len(p), nil
}

func TestWriteSparseSkipsZeroBlocks(t *testing.T) {
	p := make([]byte, 64<<10+100) // 16 blocks and a short tail
	copy(p[5000:], []byte("data in block 1"))
	copy(p[3*4096:], bytes.Repeat([]byte{7}, 2*4096)) // blocks 3-4: one run
	p[len(p)-1] = 9                                   // the short last block
	w := &recordingWriter{buf: make([]byte, 1<<20)}
	n, err := writeSparse(w, p, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w.buf[100:100+len(p)], p) {
		t.Fatal("content differs")
	}
	if w.writes != 3 || n != 4096+2*4096+100 || n != w.bytes {
		t.Errorf("%d writes of %d bytes (reported %d); want 3 writes: block 1, blocks 3-4, the tail", w.writes, w.bytes, n)
	}
}
