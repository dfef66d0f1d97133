package repo

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

func TestRoundTrip(t *testing.T) {
	cases := []struct {
		name   string
		init   InitOptions
		size   int64
		writes func(im *image) map[int64][]byte
		holes  int64 // expected hole chunks
		read   int64 // expected bytes read (-1: whole image)
	}{
		{"random-odd-size", InitOptions{Password: "pw"}, 40*testCS + 12345,
			func(im *image) map[int64][]byte { return map[int64][]byte{0: im.random(40*testCS + 12345)} }, 0, -1},
		{"sparse", InitOptions{Password: "pw"}, 64 * testCS,
			func(im *image) map[int64][]byte {
				return map[int64][]byte{5 * testCS: im.random(testCS), 40*testCS + 100: im.random(3000)}
			}, 62, -2},
		{"mixed-unencrypted-uncompressed", InitOptions{NoEncryption: true, Compression: "none"}, 30*testCS + 1,
			func(im *image) map[int64][]byte {
				text := []byte(strings.Repeat("compressible text ", 4000))
				return map[int64][]byte{0: im.random(3 * testCS), 10 * testCS: text, 30 * testCS: {7}}
			}, -1, -2},
		{"mixed-unencrypted-zstd", InitOptions{NoEncryption: true}, 30*testCS + 1,
			func(im *image) map[int64][]byte {
				text := []byte(strings.Repeat("compressible text ", 4000))
				return map[int64][]byte{0: im.random(3 * testCS), 10 * testCS: text, 30 * testCS: {7}}
			}, -1, -2},
		{"empty", InitOptions{Password: "pw"}, 0, func(im *image) map[int64][]byte { return nil }, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			be, err := local.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			tc.init.ChunkSize, tc.init.KDF = testCS, cheapKDF
			r := newRepoOn(t, be, tc.init)
			im := newImage(t, 1)
			im.create(tc.size, tc.writes(im))
			res := backupFile(t, r, im.path, map[string]string{"case": tc.name}, DiskOptions{})
			got := restoreFile(t, r, res.disk.ID)
			if a, b := fileHash(t, im.path), fileHash(t, got); a != b {
				t.Fatalf("restored image differs: sha256 %s, original %s", b, a)
			}
			st := res.disk.Stats
			if tc.holes >= 0 && st.Holes != tc.holes {
				t.Errorf("holes = %d, want %d", st.Holes, tc.holes)
			}
			// Only allocated blocks are read, and each exactly once.
			if alloc := allocatedBytes(t, im.path); res.read != alloc {
				t.Errorf("bytes read = %d, want the %d allocated bytes", res.read, alloc)
			}
			if tc.read == -1 && res.read != tc.size {
				t.Errorf("bytes read = %d, want the whole image %d", res.read, tc.size)
			}
			if st.BytesRead != res.read {
				t.Errorf("stats bytes_read %d, source saw %d", st.BytesRead, res.read)
			}
			if n := int64(countObjects(t, be, "chunks/")); n != st.ChunksNew {
				t.Errorf("%d chunk objects stored, stats say %d new", n, st.ChunksNew)
			}
			if st.ChunksNew+st.ChunksReuse+st.Holes != res.disk.Chunks {
				t.Errorf("new %d + reused %d + holes %d != %d chunks", st.ChunksNew, st.ChunksReuse, st.Holes, res.disk.Chunks)
			}
		})
	}
}

func TestIncrementalWithExtentsReadsOnlyTouchedChunks(t *testing.T) {
	r, dir := newLocalRepo(t)
	be, _ := local.Open(dir)
	im := newImage(t, 2)
	size := int64(100 * testCS)
	im.create(size, map[int64][]byte{0: im.random(int(size))})
	labels := map[string]string{"disk": "db"}
	full := backupFile(t, r, im.path, labels, DiskOptions{})
	if full.read != size || full.disk.Stats.ChunksNew != 100 {
		t.Fatalf("full backup read %d bytes, %d new chunks; want %d and 100", full.read, full.disk.Stats.ChunksNew, size)
	}
	chunksBefore := countObjects(t, be, "chunks/")

	// Change: one 4 KiB write inside chunk 3, a write straddling chunks 10-11,
	// and an extent that is reported but whose data did not change (chunk 50).
	im.write(3*testCS+100, im.random(4096))
	im.write(11*testCS-10, im.random(20))
	exts := []disk.Extent{{Offset: 3*testCS + 100, Length: 4096}, {Offset: 11*testCS - 10, Length: 20}, {Offset: 50 * testCS, Length: 1}}
	inc := backupFile(t, r, im.path, labels, DiskOptions{Base: full.disk.ID, Changed: exts, ChangedKnown: true})
	touched := int64(4) // chunks 3, 10, 11, 50
	if inc.read != touched*testCS {
		t.Errorf("incremental read %d bytes, want touched chunks x chunk size = %d", inc.read, touched*testCS)
	}
	st := inc.disk.Stats
	if st.ChunksNew != 3 || st.ChunksReuse != 97 || st.ChunksRead != touched {
		t.Errorf("incremental: new %d reused %d read %d; want 3, 97, %d", st.ChunksNew, st.ChunksReuse, st.ChunksRead, touched)
	}
	if got := countObjects(t, be, "chunks/"); got != chunksBefore+3 {
		t.Errorf("repository holds %d chunks, want %d + 3 new", got, chunksBefore)
	}
	if inc.disk.Base != full.disk.ID {
		t.Errorf("manifest base = %q, want %q", inc.disk.Base, full.disk.ID)
	}
	if a, b := fileHash(t, im.path), fileHash(t, restoreFile(t, r, inc.disk.ID)); a != b {
		t.Fatal("incremental restore differs from the image")
	}
	// The older backup still restores to the old content: nothing depends on chains.
	if fileHash(t, restoreFile(t, r, full.disk.ID)) == fileHash(t, im.path) {
		t.Fatal("full backup restores to the changed content")
	}
}

func TestIncrementalWithoutExtentsUploadsOnlyChanged(t *testing.T) {
	r, _ := newLocalRepo(t)
	im := newImage(t, 3)
	size := int64(50*testCS + 777)
	im.create(size, map[int64][]byte{0: im.random(int(size))})
	full := backupFile(t, r, im.path, nil, DiskOptions{})
	im.write(20*testCS, im.random(10))
	im.write(size-5, im.random(5)) // the short last chunk
	inc := backupFile(t, r, im.path, nil, DiskOptions{Base: full.disk.ID})
	st := inc.disk.Stats
	if inc.read != size || st.ChunksNew != 2 || st.ChunksReuse != 49 {
		t.Errorf("read %d new %d reused %d; want %d, 2, 49", inc.read, st.ChunksNew, st.ChunksReuse, size)
	}
	if a, b := fileHash(t, im.path), fileHash(t, restoreFile(t, r, inc.disk.ID)); a != b {
		t.Fatal("restore differs")
	}
}

func TestMissingBaseFallsBackToFullRead(t *testing.T) {
	r, _ := newLocalRepo(t)
	im := newImage(t, 4)
	size := int64(10 * testCS)
	im.create(size, map[int64][]byte{0: im.random(int(size))})
	inc := backupFile(t, r, im.path, nil, DiskOptions{Base: "19990101-000000-aaaaaa/local/disk",
		Changed: []disk.Extent{{Offset: 0, Length: 1}}, ChangedKnown: true})
	if inc.read != size || inc.disk.Base != "" {
		t.Errorf("with a missing base: read %d (want %d), base %q (want none)", inc.read, size, inc.disk.Base)
	}
	if a, b := fileHash(t, im.path), fileHash(t, restoreFile(t, r, inc.disk.ID)); a != b {
		t.Fatal("restore differs")
	}
}

func TestDedupAcrossImages(t *testing.T) {
	r, dir := newLocalRepo(t)
	be, _ := local.Open(dir)
	a, b := newImage(t, 5), newImage(t, 6)
	shared := a.random(20 * testCS)
	a.create(30*testCS, map[int64][]byte{0: shared, 20 * testCS: a.random(10 * testCS)})
	b.create(25*testCS, map[int64][]byte{0: b.random(5 * testCS), 5 * testCS: shared})
	ra := backupFile(t, r, a.path, map[string]string{"img": "a"}, DiskOptions{})
	rb := backupFile(t, r, b.path, map[string]string{"img": "b"}, DiskOptions{})
	if ra.disk.Stats.ChunksNew != 30 {
		t.Errorf("first image stored %d chunks, want 30", ra.disk.Stats.ChunksNew)
	}
	if rb.disk.Stats.ChunksNew != 5 || rb.disk.Stats.ChunksReuse != 20 {
		t.Errorf("second image: new %d reused %d, want 5 and 20", rb.disk.Stats.ChunksNew, rb.disk.Stats.ChunksReuse)
	}
	if got := countObjects(t, be, "chunks/"); got != 35 {
		t.Errorf("%d chunks stored, want 35", got)
	}
	if fileHash(t, b.path) != fileHash(t, restoreFile(t, r, rb.disk.ID)) {
		t.Fatal("restore of the deduplicated image differs")
	}
}

func TestDeleteAndGCFreeExactlyUnreferenced(t *testing.T) {
	r, dir := newLocalRepo(t)
	be, _ := local.Open(dir)
	ctx := context.Background()
	a, b := newImage(t, 7), newImage(t, 8)
	shared := a.random(10 * testCS)
	a.create(16*testCS, map[int64][]byte{0: shared, 10 * testCS: a.random(6 * testCS)})
	b.create(14*testCS, map[int64][]byte{0: shared, 10 * testCS: b.random(4 * testCS)})
	ra := backupFile(t, r, a.path, map[string]string{"img": "a"}, DiskOptions{})
	rb := backupFile(t, r, b.path, map[string]string{"img": "b"}, DiskOptions{})
	if got := countObjects(t, be, "chunks/"); got != 20 {
		t.Fatalf("%d chunks before delete, want 20", got)
	}
	// Protected backups are refused.
	if _, err := r.UpdateBackup(ctx, ra.backup.ID, func(b *Backup) error { b.Protected = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteBackup(ctx, ra.backup.ID); !errors.Is(err, ErrProtected) {
		t.Fatalf("delete of a protected backup: %v, want ErrProtected", err)
	}
	if _, err := r.UpdateBackup(ctx, ra.backup.ID, func(b *Backup) error { b.Protected = false; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteBackup(ctx, ra.backup.ID); err != nil {
		t.Fatal(err)
	}
	if n := countObjects(t, be, "manifests/"+ra.backup.ID+"/"); n != 0 {
		t.Errorf("%d manifest objects of the deleted backup remain", n)
	}
	st1, err := r.GC(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st1.Trashed != 6 || st1.Purged != 0 || st1.Referenced != 14 {
		t.Errorf("first gc: %+v; want 6 trashed, 0 purged, 14 referenced", st1)
	}
	time.Sleep(20 * time.Millisecond) // file mtimes come from a coarse clock
	st2, err := r.GC(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st2.Purged != 6 || st2.Trashed != 0 {
		t.Errorf("second gc: %+v; want 6 purged", st2)
	}
	if got, trash := countObjects(t, be, "chunks/"), countObjects(t, be, "trash/"); got != 14 || trash != 0 {
		t.Errorf("after gc: %d chunks and %d in trash; want 14 and 0", got, trash)
	}
	if fileHash(t, b.path) != fileHash(t, restoreFile(t, r, rb.disk.ID)) {
		t.Fatal("the surviving backup no longer restores")
	}
	if _, err := r.Verify(ctx, nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestGCRaceLocal(t *testing.T) {
	dir := t.TempDir()
	be, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	testGCRace(t, be, 20*time.Millisecond)
}

// testGCRace forces the race the gc design exists for: a running backup
// reuses chunks whose only other referencing backup is deleted, and gc runs
// twice (trash, then purge) before the running backup commits.
//
// tick is the store's ModTime resolution: file systems use a coarse clock, S3
// reports whole seconds in HEAD answers.
func testGCRace(t *testing.T, be backend.Backend, tick time.Duration) {
	ctx := context.Background()
	r := newRepoOn(t, be, InitOptions{ChunkSize: testCS, Password: "pw", KDF: cheapKDF})
	im := newImage(t, 9)
	im.create(12*testCS, map[int64][]byte{0: im.random(12 * testCS)})
	first := backupFile(t, r, im.path, map[string]string{"run": "1"}, DiskOptions{})
	time.Sleep(tick)

	im2 := newImage(t, 10)
	content, err := os.ReadFile(im.path)
	if err != nil {
		t.Fatal(err)
	}
	copy(content[11*testCS:], im2.random(testCS)) // 11 chunks shared, 1 new
	im2.create(int64(len(content)), map[int64][]byte{0: content})

	src, err := openFile(im2.path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	s, err := r.StartBackup(ctx, BackupSpec{Labels: map[string]string{"run": "2"}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.BackupDisk(ctx, "local", "disk", src, DiskOptions{Base: first.disk.ID})
	if err != nil {
		t.Fatal(err)
	}
	if m.Stats.ChunksReuse != 11 || m.Stats.ChunksNew != 1 {
		t.Fatalf("second backup: reused %d new %d, want 11 and 1", m.Stats.ChunksReuse, m.Stats.ChunksNew)
	}
	var gcStats []GCStats
	s.testHooks.beforeCommit = func() {
		// The only other backup referencing the 11 shared chunks goes away...
		if err := r.DeleteBackup(ctx, first.backup.ID); err != nil {
			t.Fatal(err)
		}
		// ...and gc runs twice, with no grace, before this backup commits.
		for range 2 {
			time.Sleep(tick)
			st, err := r.GC(ctx, GCOptions{})
			if err != nil {
				t.Fatal(err)
			}
			gcStats = append(gcStats, st)
		}
	}
	b, err := s.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 11 shared chunks and the one only the deleted backup had; the running
	// backup's new chunk is younger than its session and stays.
	if gcStats[0].LiveSessions != 1 || gcStats[0].Trashed != 12 || gcStats[0].KeptYoung != 1 {
		t.Errorf("gc during the backup: %+v; want it to see the live session, trash 12 chunks, keep 1 young", gcStats[0])
	}
	if gcStats[1].Purged != 0 {
		t.Errorf("second gc purged %d chunks a running backup references", gcStats[1].Purged)
	}
	// Commit copied the shared chunks back from the trash (the trash copies
	// stay: only gc removes from the trash).
	if got, trash := countObjects(t, be, "chunks/"), countObjects(t, be, "trash/"); got != 12 || trash != 12 {
		t.Errorf("after commit: %d chunks, %d trashed; want 12 and 12", got, trash)
	}
	if fileHash(t, im2.path) != fileHash(t, restoreFile(t, r, b.Disks[0].ID)) {
		t.Fatal("the backup that raced with gc does not restore identically")
	}
	if _, err := r.Verify(ctx, nil, nil); err != nil {
		t.Fatalf("verify after the race: %v", err)
	}
	// gc after the commit frees only the chunk no backup references.
	time.Sleep(tick)
	st, err := r.GC(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Trashed != 0 || st.Referenced != 12 || st.Purged != 1 || st.Rescued != 11 {
		t.Errorf("gc after commit: %+v; want nothing trashed, 11 rescued, 1 purged, 12 referenced", st)
	}
	if got, trash := countObjects(t, be, "chunks/"), countObjects(t, be, "trash/"); got != 12 || trash != 0 {
		t.Errorf("after the last gc: %d chunks, %d trashed; want 12 and 0", got, trash)
	}
	if _, err := r.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyNamesBadChunkAndBackups(t *testing.T) {
	r, dir := newLocalRepo(t)
	ctx := context.Background()
	im := newImage(t, 11)
	im.create(8*testCS, map[int64][]byte{0: im.random(8 * testCS)})
	b1 := backupFile(t, r, im.path, map[string]string{"n": "1"}, DiskOptions{})
	b2 := backupFile(t, r, im.path, map[string]string{"n": "2"}, DiskOptions{})
	if _, err := r.Verify(ctx, nil, nil); err != nil {
		t.Fatalf("verify of an intact repository: %v", err)
	}
	// Flip one byte in the stored chunk of chunk index 5.
	var id ChunkID
	err := r.ForEachChunk(ctx, b1.disk, func(i int64, cid ChunkID) error {
		if i == 5 {
			id = cid
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, filepath.FromSlash(chunkName(id)))
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Verify(ctx, nil, nil)
	if !errors.Is(err, ErrVerifyFailed) {
		t.Fatalf("verify after a flipped byte: err %v, want ErrVerifyFailed", err)
	}
	if len(rep.BadChunks) != 1 || rep.BadChunks[0].ID != id.String() {
		t.Fatalf("bad chunks %+v, want exactly %s", rep.BadChunks, id)
	}
	want := []string{b1.backup.ID, b2.backup.ID}
	sort.Strings(want)
	if got := rep.BadChunks[0].Backups(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("bad chunk affects %v, want %v", got, want)
	}
	if !strings.Contains(rep.BadChunks[0].Error, "authentication failed") {
		t.Errorf("error %q does not say the chunk failed authentication", rep.BadChunks[0].Error)
	}
	// Restore fails naming backup, vm, disk and chunk.
	f, _ := os.Create(filepath.Join(t.TempDir(), "x"))
	defer f.Close()
	_, err = r.RestoreDisk(ctx, b1.disk.ID, f, RestoreOptions{})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), b1.backup.ID) || !strings.Contains(err.Error(), "disk disk") || !strings.Contains(err.Error(), id.String()) {
		t.Errorf("restore of a damaged backup: %v; want ErrCorrupt naming backup, disk and chunk", err)
	}
}

func TestWrongPassword(t *testing.T) {
	dir := t.TempDir()
	be, _ := local.Open(dir)
	newRepoOn(t, be, InitOptions{ChunkSize: testCS, Password: "right", KDF: cheapKDF})
	_, err := Open(context.Background(), be, "wrong", testOptions())
	if !errors.Is(err, ErrWrongPassword) || !strings.Contains(err.Error(), "wrong password") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("open with a wrong password: %v; want ErrWrongPassword naming the repository", err)
	}
	if _, err := Open(context.Background(), be, "", testOptions()); err == nil || !strings.Contains(err.Error(), "RAKSHA_PASSWORD") {
		t.Fatalf("open without a password: %v", err)
	}
	r, err := Open(context.Background(), be, "right", testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.AddKey(context.Background(), "second"); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), be, "second", testOptions()); err != nil {
		t.Fatalf("open with an added key: %v", err)
	}
	if _, err := Init(context.Background(), be, InitOptions{Password: "x"}, testOptions()); !errors.Is(err, ErrAlreadyInitialized) {
		t.Fatalf("init over a repository: %v", err)
	}
}

func TestCorruptObjectsGiveClearErrorsAndTouchNothing(t *testing.T) {
	r, dir := newLocalRepo(t)
	be, _ := local.Open(dir)
	ctx := context.Background()
	im := newImage(t, 12)
	im.create(4*testCS, map[int64][]byte{0: im.random(4 * testCS)})
	res := backupFile(t, r, im.path, nil, DiskOptions{})
	header := filepath.Join(dir, "manifests", res.disk.ID, "header")
	record := filepath.Join(dir, "backups", res.backup.ID)
	orig, _ := os.ReadFile(header)
	for _, tc := range []struct {
		name, path string
		data       []byte
	}{
		{"truncated manifest", header, orig[:len(orig)/2]},
		{"garbage manifest", header, []byte("this is not a manifest at all")},
		{"empty record", record, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			saved, _ := os.ReadFile(tc.path)
			defer os.WriteFile(tc.path, saved, 0o600)
			if err := os.WriteFile(tc.path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			before := snapshotObjects(t, be)
			f, _ := os.Create(filepath.Join(t.TempDir(), "out"))
			defer f.Close()
			_, err := r.RestoreDisk(ctx, res.disk.ID, f, RestoreOptions{})
			if tc.path == header && (!errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), res.disk.ID)) {
				t.Errorf("restore: %v; want ErrCorrupt naming %s", err, res.disk.ID)
			}
			if _, err := r.ListBackups(ctx, Filter{}); tc.path == record && (!errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), res.backup.ID)) {
				t.Errorf("list: %v; want ErrCorrupt naming %s", err, res.backup.ID)
			}
			if _, err := r.GC(ctx, GCOptions{}); err == nil {
				t.Error("gc ran over a damaged repository; it must stop")
			}
			if _, err := r.Check(ctx); !errors.Is(err, ErrCheckFailed) {
				t.Errorf("check: %v, want ErrCheckFailed", err)
			}
			after := snapshotObjects(t, be)
			delete(before, "gc/last")
			delete(after, "gc/last")
			if len(before) != len(after) {
				t.Fatalf("objects changed: %d before, %d after", len(before), len(after))
			}
			for k, v := range before {
				if after[k] != v {
					t.Errorf("object %s changed", k)
				}
			}
		})
	}
}

func TestBadChangedExtentsAreRejected(t *testing.T) {
	r, _ := newLocalRepo(t)
	im := newImage(t, 13)
	im.create(4*testCS, map[int64][]byte{0: im.random(4 * testCS)})
	full := backupFile(t, r, im.path, nil, DiskOptions{})
	ctx := context.Background()
	src, _ := openFile(im.path)
	defer src.Close()
	s, _ := r.StartBackup(ctx, BackupSpec{})
	_, err := s.BackupDisk(ctx, "local", "disk", src, DiskOptions{Base: full.disk.ID, ChangedKnown: true,
		Changed: []disk.Extent{{Offset: 4*testCS - 1, Length: 2}}})
	if err == nil || !strings.Contains(err.Error(), "past the end of the disk") {
		t.Fatalf("extent past the end: %v", err)
	}
	if err := s.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	list, _ := r.ListBackups(ctx, Filter{})
	if len(list) != 1 {
		t.Fatalf("%d backups after a failed one, want 1", len(list))
	}
}

// TestCommitWritesConsistencyAndFreezeWindows: what is known only after the
// guests were thawed goes into the record in its one write.
func TestCommitWritesConsistencyAndFreezeWindows(t *testing.T) {
	r, _ := newLocalRepo(t)
	im := newImage(t, 21)
	im.create(2*testCS, map[int64][]byte{0: im.random(testCS)})
	ctx := context.Background()
	src, err := openFile(im.path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	s, err := r.StartBackup(ctx, BackupSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.BackupDisk(ctx, "web", "vda", src, DiskOptions{}); err != nil {
		t.Fatal(err)
	}
	w := map[string]time.Duration{"web": 640 * time.Millisecond}
	s.SetConsistency("app")
	s.SetFreezeWindows(w, 700*time.Millisecond)
	b, err := s.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := r.LoadBackup(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Consistency != "app" || len(stored.FreezeWindows) != 1 || stored.FreezeWindows["web"] != w["web"] || stored.WorkloadWindow != 700*time.Millisecond {
		t.Fatalf("stored record: consistency %q, freeze windows %v, workload window %v; want app, %v, 700ms", stored.Consistency, stored.FreezeWindows, stored.WorkloadWindow, w)
	}
}

// TestValidNameMatchesRegexp: ValidName is the regexp it replaced.
func TestValidNameMatchesRegexp(t *testing.T) {
	re := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	cases := []string{"", "a", "A9", "vm-1", "disk.eph0", "_x", ".x", "-x", "x_", "x.", "x-", "a/b", "a b", "ä", "a\\x00",
		strings.Repeat("a", 127), strings.Repeat("a", 128), strings.Repeat("a", 129), "x" + strings.Repeat("-", 127), "x" + strings.Repeat("-", 128)}
	for c := range 256 {
		cases = append(cases, string([]byte{byte(c)}), "a"+string([]byte{byte(c)}))
	}
	for _, s := range cases {
		if got, want := ValidName(s), re.MatchString(s); got != want {
			t.Errorf("ValidName(%q) = %v, the regexp says %v", s, got, want)
		}
	}
}
