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

func TestWriteSparseSkipsLongZeroRuns(t *testing.T) {
	p := make([]byte, 256<<10+100) // 64 blocks and a short tail
	copy(p[5000:], []byte("data in block 1"))
	copy(p[3*4096:], bytes.Repeat([]byte{7}, 2*4096)) // blocks 3-4: a short gap after block 1
	copy(p[40*4096:], []byte("block 40"))             // after a gap of 35 blocks (140 KiB): a hole
	p[len(p)-1] = 9                                   // the short last block, after a 92 KiB gap
	w := &recordingWriter{buf: make([]byte, 1<<20)}
	n, err := writeSparse(w, p, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w.buf[100:100+len(p)], p) {
		t.Fatal("content differs")
	}
	// blocks 1-4 (the 4 KiB gap is written), block 40, the tail
	if w.writes != 3 || n != 4*4096+4096+100 || n != w.bytes {
		t.Errorf("%d writes of %d bytes (reported %d); want 3 writes of 4+1 blocks and the tail", w.writes, w.bytes, n)
	}
	w = &recordingWriter{buf: make([]byte, 1<<20)}
	if n, err := writeSparse(w, make([]byte, 1<<20), 0); err != nil || n != 0 || w.writes != 0 {
		t.Errorf("an all-zero chunk: %d writes, %d bytes, %v", w.writes, n, err)
	}
}
