package repo

import (
	"context"
	"testing"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/disk/file"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

// A backup with chunks prepared before the key was known stores the same
// chunks, reads the same bytes, and restores the same image as one without.
func TestPreparedChunksBackUpLikeRead(t *testing.T) {
	r, dir := newLocalRepo(t)
	be, _ := local.Open(dir)
	im := newImage(t, 3)
	size := int64(60*testCS + 5000)
	im.create(size, map[int64][]byte{0: im.random(20 * testCS), 30 * testCS: im.random(10 * testCS), size - 3000: im.random(3000)})
	labels := map[string]string{"disk": "prep"}
	full := backupFile(t, r, im.path, labels, DiskOptions{})

	// Changes: random data in chunks 2 and 5, zeros over all of chunk 31 (a
	// hole now), data in a hole (chunk 45), the partial last chunk, and an
	// extent over a hole that stays one (chunk 50).
	im.write(2*testCS+10, im.random(4096))
	im.write(5*testCS, im.random(testCS))
	im.write(31*testCS, make([]byte, testCS))
	im.write(45*testCS+4096, im.random(8192))
	im.write(size-100, im.random(50))
	exts := []disk.Extent{{Offset: 2*testCS + 10, Length: 4096}, {Offset: 5 * testCS, Length: testCS},
		{Offset: 31 * testCS, Length: testCS}, {Offset: 45*testCS + 4096, Length: 8192}, {Offset: size - 100, Length: 50},
		{Offset: 50 * testCS, Length: 100}}

	src, err := file.Open(im.path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	// An Opening whose key is "still being derived" until after Prepare.
	o := &Opening{cfg: r.cfg, codec: r.codec, done: make(chan struct{})}
	prep := o.Prepare(context.Background(), src, exts)
	close(o.done)
	if prep.Len() != 5 { // chunks 2, 5, 31, 45, 60; chunk 50 is unallocated
		t.Fatalf("%d chunks prepared, want 5", prep.Len())
	}
	chunksBefore := countObjects(t, be, "chunks/")
	inc := backupFile(t, r, im.path, labels, DiskOptions{Base: full.disk.ID, Changed: exts, ChangedKnown: true, Prepared: prep})
	if prep.Len() != 0 {
		t.Errorf("%d prepared chunks were not used", prep.Len())
	}
	st := inc.disk.Stats
	if st.ChunksRead != 5 || st.ChunksNew != 4 {
		t.Errorf("read %d chunks, %d new; want 5 read and 4 new (chunk 31 is a hole now)", st.ChunksRead, st.ChunksNew)
	}
	if got := countObjects(t, be, "chunks/"); int64(got) != int64(chunksBefore)+st.ChunksNew {
		t.Errorf("%d chunk objects, want %d + %d", got, chunksBefore, st.ChunksNew)
	}
	// Prepared chunks were read by Prepare, not by the copy; the stats
	// still count them.
	if inc.read != 0 {
		t.Errorf("the copy read %d bytes itself, want 0", inc.read)
	}
	if a, b := fileHash(t, im.path), fileHash(t, restoreFile(t, r, inc.disk.ID)); a != b {
		t.Fatal("restore of the incremental differs from the image")
	}
	// The same incremental without preparation stores the same chunk list.
	again := backupFile(t, r, im.path, labels, DiskOptions{Base: full.disk.ID, Changed: exts, ChangedKnown: true})
	if again.disk.Stats.BytesRead != st.BytesRead || again.disk.Stats.Holes != st.Holes {
		t.Errorf("without preparation: read %d, %d holes; with: read %d, %d holes",
			again.disk.Stats.BytesRead, again.disk.Stats.Holes, st.BytesRead, st.Holes)
	}
	var ids [2][]ChunkID
	for k, m := range []*DiskManifest{inc.disk, again.disk} {
		if err := r.ForEachChunk(context.Background(), m, func(_ int64, id ChunkID) error { ids[k] = append(ids[k], id); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	for i := range ids[0] {
		if ids[0][i] != ids[1][i] {
			t.Fatalf("chunk %d: %s with preparation, %s without", i, ids[0][i], ids[1][i])
		}
	}
}
