package repo

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

// failingSource fails every read at or past failAt, like a worker that dies.
// If before is set, a failing read first waits (up to 10 s) for it to be
// closed, so the failure comes after what the test waits for and not when
// the reader, far ahead of the uploads on a busy machine, gets there.
type failingSource struct {
	disk.Source
	failAt int64
	before chan struct{}
}

var errWorkerDied = errors.New("worker died")

func (f *failingSource) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.failAt {
		if f.before != nil {
			select {
			case <-f.before:
			case <-time.After(10 * time.Second):
			}
		}
		return 0, errWorkerDied
	}
	return f.Source.ReadAt(p, off)
}

func TestInterruptedCopyResumesFromCheckpoint(t *testing.T) {
	r, dir := newLocalRepo(t)
	be, _ := local.Open(dir)
	ctx := context.Background()
	im := newImage(t, 21)
	const n = 100
	im.create(n*testCS, map[int64][]byte{0: im.random(n * testCS)})

	s, err := r.StartBackup(ctx, BackupSpec{Labels: map[string]string{"w": "db"}, Consistency: "crash"})
	if err != nil {
		t.Fatal(err)
	}
	src1, _ := openFile(im.path)
	var lastCheckpoint atomic.Int64
	checkpointed := make(chan struct{})
	var once sync.Once
	_, err = s.BackupDisk(ctx, "vm1", "vda", &failingSource{Source: src1, failAt: 60 * testCS, before: checkpointed},
		DiskOptions{Resumable: true, CheckpointEvery: 8, OnCheckpoint: func(done int64) {
			lastCheckpoint.Store(done)
			once.Do(func() { close(checkpointed) })
		}})
	src1.Close()
	if !errors.Is(err, errWorkerDied) {
		t.Fatalf("first attempt: %v, want the read error", err)
	}
	if lc := lastCheckpoint.Load(); lc < 8*testCS || lc > 60*testCS {
		t.Fatalf("last checkpoint at %d bytes, want between chunk 8 and 60", lc)
	}
	uploadedBefore := countObjects(t, be, "chunks/")

	// "Another worker" joins the session and retries the copy.
	s2, err := r.JoinBackup(ctx, s.ID())
	if err != nil {
		t.Fatal(err)
	}
	src2, _ := openFile(im.path)
	defer src2.Close()
	cnt := &countingSource{Source: src2}
	m, err := s2.BackupDisk(ctx, "vm1", "vda", cnt, DiskOptions{Resumable: true, CheckpointEvery: 8})
	if err != nil {
		t.Fatal(err)
	}
	if want := n*testCS - lastCheckpoint.Load(); cnt.read != want {
		t.Errorf("resumed copy read %d bytes, want only the %d after the checkpoint", cnt.read, want)
	}
	if got := countObjects(t, be, "chunks/"); got != n {
		t.Errorf("%d chunks stored after the retry, want %d (none twice, none lost)", got, n)
	}
	if m.Stats.ChunksNew+m.Stats.ChunksReuse != n {
		t.Errorf("stats: new %d + reused %d != %d (uploaded before the crash: %d)", m.Stats.ChunksNew, m.Stats.ChunksReuse, n, uploadedBefore)
	}
	// A retry after completion returns the same manifest without reading.
	s3, err := r.JoinBackup(ctx, s.ID())
	if err != nil {
		t.Fatal(err)
	}
	cnt3 := &countingSource{Source: src2}
	m3, err := s3.BackupDisk(ctx, "vm1", "vda", cnt3, DiskOptions{Resumable: true})
	if err != nil || m3.ID != m.ID || cnt3.read != 0 {
		t.Fatalf("retry after completion: %v, id %s, read %d", err, m3.ID, cnt3.read)
	}
	b, err := s3.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b.Labels["w"] != "db" || b.Consistency != "crash" || len(b.Disks) != 1 {
		t.Errorf("committed record lost the spec given at start: %+v", b)
	}
	if countObjects(t, be, "manifests/"+b.ID+"/vm1/vda/partial") != 0 {
		t.Error("the saved position outlived the copy")
	}
	// Identical to an uninterrupted backup of the same image.
	ref := backupFile(t, r, im.path, nil, DiskOptions{})
	var a, c []ChunkID
	r.ForEachChunk(ctx, m, func(_ int64, id ChunkID) error { a = append(a, id); return nil })
	r.ForEachChunk(ctx, ref.disk, func(_ int64, id ChunkID) error { c = append(c, id); return nil })
	if len(a) != len(c) {
		t.Fatalf("%d vs %d chunks", len(a), len(c))
	}
	for i := range a {
		if a[i] != c[i] {
			t.Fatalf("chunk %d differs from an uninterrupted backup", i)
		}
	}
	if fileHash(t, im.path) != fileHash(t, restoreFile(t, r, m.ID)) {
		t.Fatal("restore of the resumed backup differs")
	}
	if _, err := r.JoinBackup(ctx, b.ID); !errors.Is(err, ErrNoSession) {
		t.Errorf("join of a committed backup: %v, want ErrNoSession", err)
	}
}

// failingWriter fails every write at or past failAt, like a worker that
// dies in the middle of a restore.
type failingWriter struct {
	f      *os.File
	failAt int64
}

func (w *failingWriter) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > w.failAt {
		return 0, errWorkerDied
	}
	return w.f.WriteAt(p, off)
}

// TestInterruptedRestoreResumes: a restore that dies part way reports a
// resume point with every chunk before it written; a second restore from
// there into the same target fetches only the rest, and the target equals
// the disk.
func TestInterruptedRestoreResumes(t *testing.T) {
	r, _ := newLocalRepo(t)
	ctx := context.Background()
	im := newImage(t, 22)
	const n = 64
	im.create(n*testCS, map[int64][]byte{0: im.random(20 * testCS), 30 * testCS: im.random(30 * testCS)}) // holes between
	res := backupFile(t, r, im.path, nil, DiskOptions{})
	out := filepath.Join(t.TempDir(), "restored.img")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(n * testCS); err != nil {
		t.Fatal(err)
	}
	// The first restore fetches one chunk at a time, so that where it dies
	// is known (with several in flight, one slow chunk holds the resume
	// point back).
	be := r.be
	o := testOptions()
	o.Transfers = 1
	serial, err := Open(ctx, be, "secret", o)
	if err != nil {
		t.Fatal(err)
	}
	var reported int64
	st1, err := serial.RestoreDisk(ctx, res.disk.ID, &failingWriter{f: f, failAt: 45 * testCS}, RestoreOptions{ZeroHoles: true,
		Progress: func(p Progress) { reported = max(reported, p.Resume) }})
	if !errors.Is(err, errWorkerDied) {
		t.Fatalf("first restore: %v, want the write error", err)
	}
	resume := st1.Resume
	if resume != 45*testCS || reported > resume {
		t.Fatalf("resume point %d (progress said %d): want chunk 45's offset %d, and progress never past it", resume, reported, 45*testCS)
	}
	if _, err := r.RestoreDisk(ctx, res.disk.ID, f, RestoreOptions{ZeroHoles: true, From: resume + 1}); err == nil || !strings.Contains(err.Error(), "not a chunk boundary") {
		t.Errorf("resume at an odd offset: %v, want a clear refusal", err)
	}
	st, err := r.RestoreDisk(ctx, res.disk.ID, f, RestoreOptions{ZeroHoles: true, From: resume})
	if err != nil {
		t.Fatal(err)
	}
	var dataAfter int64
	for i := resume / testCS; i < n; i++ {
		if i < 20 || (i >= 30 && i < 60) {
			dataAfter += testCS
		}
	}
	if st.BytesFetched != dataAfter {
		t.Errorf("resumed restore fetched %d bytes, want only the %d of data after the resume point %d", st.BytesFetched, dataAfter, resume)
	}
	if fileHash(t, out) != fileHash(t, im.path) {
		t.Fatal("the resumed restore differs from the disk")
	}
	t.Logf("died at chunk 45, resumed at chunk %d, fetched %d of %d data bytes the second time", resume/testCS, st.BytesFetched, 50*testCS)
}
