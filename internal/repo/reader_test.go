package repo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
)

func TestDiskReaderFetchesOnlyWhatIsRead(t *testing.T) {
	ctx := context.Background()
	r, _ := newLocalRepo(t)
	im := newImage(t, 7)
	const size = 40*testCS + 1234 // 41 chunks, the last one short
	im.create(size, map[int64][]byte{
		0:                 im.random(3 * testCS),
		10*testCS + 100:   im.random(testCS),
		40 * testCS:       im.random(1234),
		20*testCS - 10000: im.random(20000), // straddles chunks 19 and 20
	})
	want, err := os.ReadFile(im.path)
	if err != nil {
		t.Fatal(err)
	}
	res := backupFile(t, r, im.path, nil, DiskOptions{})

	d, err := r.OpenDisk(ctx, res.disk.ID, ReaderOptions{CacheChunks: 2})
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != size {
		t.Fatalf("size %d, want %d", d.Size(), size)
	}
	read := func(off, n int64) {
		t.Helper()
		p := make([]byte, n)
		got, err := d.ReadAt(p, off)
		if err != nil && !(errors.Is(err, io.EOF) && off+n > size) {
			t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
		}
		if !bytes.Equal(p[:got], want[off:off+int64(got)]) {
			t.Fatalf("ReadAt(%d, %d): bytes differ", off, n)
		}
	}
	// one chunk, read twice: fetched once
	read(testCS+5, 100)
	read(testCS+500, 100)
	if st := d.Stats(); st.ChunksFetched != 1 || st.CacheHits != 1 || st.BytesFetched != testCS {
		t.Fatalf("after two reads in chunk 1: %+v", st)
	}
	// a hole: nothing fetched
	read(30*testCS, 2*testCS)
	if st := d.Stats(); st.ChunksFetched != 1 || st.HoleReads != 2 {
		t.Fatalf("after reading holes: %+v", st)
	}
	// across chunks 19 and 20, and the short last chunk (read past the end)
	read(20*testCS-10000, 20000)
	read(40*testCS, 5000)
	if st := d.Stats(); st.ChunksFetched != 4 {
		t.Fatalf("after straddling read and tail: %+v", st)
	}
	// cache of 2: chunk 1 went out and is fetched again
	read(testCS, 10)
	if st := d.Stats(); st.ChunksFetched != 5 || st.PagesFetched != 1 {
		t.Fatalf("after re-reading an evicted chunk: %+v", st)
	}
	// the whole disk through io.SectionReader equals the image
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.NewSectionReader(d, 0, d.Size())); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatal("whole-disk read differs from the image")
	}
	if _, err := d.ReadAt(make([]byte, 1), size); !errors.Is(err, io.EOF) {
		t.Fatalf("read at end: %v, want io.EOF", err)
	}
}

func TestDiskReaderCancelled(t *testing.T) {
	r, _ := newLocalRepo(t)
	im := newImage(t, 8)
	im.create(4*testCS, map[int64][]byte{0: im.random(4 * testCS)})
	res := backupFile(t, r, im.path, nil, DiskOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	d, err := r.OpenDisk(ctx, res.disk.ID, ReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := d.ReadAt(make([]byte, 10), 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel: %v", err)
	}
	if _, err := r.OpenDisk(context.Background(), res.backup.ID+"/local/nope", ReaderOptions{}); err == nil {
		t.Fatal("opening a missing disk succeeded")
	}
}
