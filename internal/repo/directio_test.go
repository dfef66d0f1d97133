package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

func TestRestoreThroughDirectWriter(t *testing.T) {
	// 256 KiB chunks: 64 blocks, so chunks with scattered blocks are
	// stored as sparse containers.
	const testCS = 256 << 10
	be, err := local.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := newRepoOn(t, be, InitOptions{ChunkSize: testCS, Password: "pw", KDF: cheapKDF})
	im := newImage(t, 7)
	size := int64(24*testCS + 12345) // not a multiple of 4 KiB
	writes := map[int64][]byte{
		0:                  im.random(2 * testCS),                                    // incompressible: stored raw
		3 * testCS:         bytes.Repeat([]byte("some text that compresses "), 3000), // zstd, zeros after it
		10*testCS + 8192:   im.random(4096),                                          // a lone block: sparse container
		10*testCS + 200000: im.random(100),
		size - 5000:        im.random(5000), // the partial last block and the one before
	}
	for b := int64(0); b < 64; b++ { // scattered 4 KiB blocks over chunks 14-17
		writes[14*testCS+b*int64(testCS)/16] = im.random(4096)
	}
	im.create(size, writes)
	res := backupFile(t, r, im.path, nil, DiskOptions{})

	out := filepath.Join(t.TempDir(), "restored.img")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	dw := NewDirectWriter(f)
	t.Logf("O_DIRECT available on the test file system: %v", dw.Direct())
	st, err := r.RestoreDisk(context.Background(), res.disk.ID, dw, RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if a, b := fileHash(t, im.path), fileHash(t, out); a != b {
		t.Fatalf("restored image differs: sha256 %s, original %s", b, a)
	}
	if st.BytesWritten >= size/2 {
		t.Errorf("wrote %d of %d bytes: holes were not skipped", st.BytesWritten, size)
	}
	if alloc := allocatedBytes(t, out); alloc >= size/2 {
		t.Errorf("restored file has %d of %d bytes allocated: not sparse", alloc, size)
	}
}

func TestDirectWriterUnalignedWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dw := NewDirectWriter(f)
	defer dw.Close()
	const big = directMinWrite
	buf := alignedBuffer(big + 3*directAlign)[:big+3*directAlign]
	for i := range buf {
		buf[i] = byte(i % 251)
	}
	want := make([]byte, 6*directAlign)
	for _, w := range []struct {
		p   []byte
		off int64
	}{
		{buf[:2*directAlign], 0},                              // aligned but short: buffered
		{buf[1 : 1+directAlign], 2 * directAlign},             // unaligned buffer
		{buf[:directAlign], 3*directAlign + 512},              // unaligned offset
		{buf[:directAlign+100], 5 * directAlign},              // short, with a partial block
		{buf[:10], 4*directAlign + 512 + directAlign},         // small
		{buf[:big], 8 * directAlign},                          // aligned and long: direct
		{buf[:big+100], 8*directAlign + big},                  // direct head, buffered tail
		{buf[1 : 1+big], 8*directAlign + 2*big + directAlign}, // unaligned buffer, long
	} {
		n, err := dw.WriteAt(w.p, w.off)
		if err != nil || n != len(w.p) {
			t.Fatalf("write of %d at %d: %d, %v", len(w.p), w.off, n, err)
		}
		if end := w.off + int64(len(w.p)); end > int64(len(want)) {
			want = append(want, make([]byte, end-int64(len(want)))...)
		}
		copy(want[w.off:], w.p)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("file content differs from what was written")
	}
}

// A DirectWriter flushes in the background while a long restore writes, and
// Sync leaves every byte readable and the flushes' errors (none here)
// reported.
func TestDirectWriterFlushesAsItGoes(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "target"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dw := NewDirectWriter(f)
	buf := alignedBuffer(4 << 20)[:4<<20]
	want := sha256.New()
	total := int64(flushEvery * 5 / 2)
	for off := int64(0); off < total; off += int64(len(buf)) {
		for i := range buf {
			buf[i] = byte(off>>20) ^ byte(i)
		}
		if _, err := dw.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		want.Write(buf)
	}
	if err := dw.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if n := dw.flushed.Load(); n < 1 || n > 2 {
		t.Errorf("%d background flushes for %d MiB written, want 1 or 2 (one per %d MiB, one at a time)", n, total>>20, flushEvery>>20)
	}
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	got := sha256.New()
	if _, err := io.Copy(got, io.NewSectionReader(f, 0, total)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Error("the target does not hold what was written")
	}
}
