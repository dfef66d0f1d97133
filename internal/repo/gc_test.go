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

	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

// fastGC is the options of a test gc run: no grace, a short lease settle.
func fastGC() GCOptions { return GCOptions{LeaseSettle: 10 * time.Millisecond} }

// reusingBackup starts a backup of an image made of the same chunks as the
// deleted backup's, so the running backup reuses chunks nothing references.
// It returns the session (uncommitted) and the image path.
func reusingBackup(t *testing.T, r *Repository, seed uint64, tick time.Duration) (*Session, string) {
	t.Helper()
	ctx := context.Background()
	im := newImage(t, seed)
	im.create(6*testCS, map[int64][]byte{0: im.random(6 * testCS)})
	first := backupFile(t, r, im.path, map[string]string{"run": "1"}, DiskOptions{})
	if err := r.DeleteBackup(ctx, first.backup.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(tick)
	s, err := r.StartBackup(ctx, BackupSpec{Labels: map[string]string{"run": "2"}})
	if err != nil {
		t.Fatal(err)
	}
	return s, im.path
}

func backupInto(t *testing.T, s *Session, path string) *DiskManifest {
	t.Helper()
	src, err := openFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	m, err := s.BackupDisk(context.Background(), "local", "disk", src, DiskOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// checkWhole restores the backup and compares it with the image, and runs
// verify over the whole repository.
func checkWhole(t *testing.T, r *Repository, b *Backup, path string) {
	t.Helper()
	if fileHash(t, path) != fileHash(t, restoreFile(t, r, b.Disks[0].ID)) {
		t.Fatal("the backup that raced with gc does not restore identically")
	}
	if _, err := r.Verify(context.Background(), nil, nil); err != nil {
		t.Fatalf("verify after the race: %v", err)
	}
}

// TestGCTrashMoveSafeAgainstRescue: gc has copied a chunk to the trash and is
// about to delete it from chunks/, when a backup that reuses the chunk commits
// and rescues it from the trash. Before the fix the rescue removed the trash
// copy and gc then deleted chunks/ — the chunk was in neither place.
func TestGCTrashMoveSafeAgainstRescue(t *testing.T) {
	r, dir := newLocalRepo(t)
	be, _ := local.Open(dir)
	ctx := context.Background()
	s, path := reusingBackup(t, r, 41, 20*time.Millisecond)
	m := backupInto(t, s, path)
	if m.Stats.ChunksReuse != 6 {
		t.Fatalf("backup reused %d chunks, want 6", m.Stats.ChunksReuse)
	}
	var b *Backup
	var once sync.Once
	o := fastGC()
	o.testHook = func(step string) {
		if step != "trash-copied" {
			return
		}
		once.Do(func() {
			var err error
			if b, err = s.Commit(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	st, err := r.GC(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if b == nil {
		t.Fatal("the backup did not commit inside gc's trash move")
	}
	if st.Trashed != 6 || st.Rescued != 6 {
		t.Errorf("gc: %+v; want 6 trashed (the backup was not committed when gc marked) and 6 rescued", st)
	}
	checkWhole(t, r, b, path)
	if got := countObjects(t, be, "chunks/"); got != 6 {
		t.Errorf("%d chunks stored after gc, want all 6 back in chunks/", got)
	}
}

// TestGCDoesNotPurgeWhatARunningBackupFoundStored: a gc run copies a chunk
// to the trash, a backup starts and finds the chunk still in chunks/, the run
// then deletes it from chunks/. A second gc run while the backup is still
// running must not purge the trash copy: before the fix it judged the copy's
// age by its ModTime, which is older than the backup's start.
func TestGCDoesNotPurgeWhatARunningBackupFoundStored(t *testing.T) {
	r, _ := newLocalRepo(t)
	ctx := context.Background()
	im := newImage(t, 43)
	im.create(6*testCS, map[int64][]byte{0: im.random(6 * testCS)})
	first := backupFile(t, r, im.path, map[string]string{"run": "1"}, DiskOptions{})
	if err := r.DeleteBackup(ctx, first.backup.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	var s *Session
	var m *DiskManifest
	var once sync.Once
	o := fastGC()
	o.testHook = func(step string) {
		if step != "trash-copied" {
			return
		}
		once.Do(func() {
			time.Sleep(20 * time.Millisecond) // the session marker is clearly after the copy
			var err error
			if s, err = r.StartBackup(ctx, BackupSpec{Labels: map[string]string{"run": "2"}}); err != nil {
				t.Fatal(err)
			}
			m = backupInto(t, s, im.path)
		})
	}
	st1, err := r.GC(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if st1.Trashed != 6 || m.Stats.ChunksReuse == 0 {
		t.Fatalf("first gc %+v, backup reused %d: want 6 trashed and at least one chunk reused", st1, m.Stats.ChunksReuse)
	}
	time.Sleep(20 * time.Millisecond)
	st2, err := r.GC(ctx, fastGC())
	if err != nil {
		t.Fatal(err)
	}
	if st2.LiveSessions != 1 || st2.Purged != 0 {
		t.Errorf("second gc: %+v; want it to see the live backup and purge nothing", st2)
	}
	b, err := s.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkWhole(t, r, b, im.path)
}

// TestGCLeaseOneAtATime: a gc refuses while another holds the lease, naming
// the holder; a stale lease (a killed run) is taken over.
func TestGCLeaseOneAtATime(t *testing.T) {
	r, dir := newLocalRepo(t)
	be, _ := local.Open(dir)
	ctx := context.Background()
	r2, err := Open(ctx, be, "secret", testOptions())
	if err != nil {
		t.Fatal(err)
	}
	inside, proceed := make(chan struct{}), make(chan struct{})
	o := fastGC()
	o.testHook = func(step string) {
		if step == "sessions" {
			close(inside)
			<-proceed
		}
	}
	errc := make(chan error, 1)
	go func() { _, err := r.GC(ctx, o); errc <- err }()
	<-inside
	_, err = r2.GC(ctx, fastGC())
	if !errors.Is(err, ErrGCRunning) || !strings.Contains(err.Error(), "pid") || !strings.Contains(err.Error(), "host") {
		t.Errorf("second gc while the first runs: %v; want ErrGCRunning naming the holder", err)
	}
	close(proceed)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n := countObjects(t, be, "gc/lease/"); n != 0 {
		t.Errorf("%d lease objects left after both runs", n)
	}

	// A lease last refreshed more than a TTL ago is a killed run's.
	if err := be.Save(ctx, "gc/lease/killed-run", []byte(`{"run":"killed-run","host":"gone","pid":1}`)); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "gc", "lease", "killed-run"), old, old); err != nil {
		t.Fatal(err)
	}
	o2 := fastGC()
	o2.LeaseTTL = time.Minute
	if _, err := r2.GC(ctx, o2); err != nil {
		t.Fatalf("gc with a stale lease present: %v", err)
	}
	if n := countObjects(t, be, "gc/lease/"); n != 0 {
		t.Errorf("%d lease objects left; the stale one should be gone", n)
	}
}

// failLeaseRefresh fails every save of a lease object after the first.
type failLeaseRefresh struct {
	backend.Backend
	saves atomic.Int32
}

func (f *failLeaseRefresh) Save(ctx context.Context, name string, data []byte) error {
	if strings.HasPrefix(name, "gc/lease/") && f.saves.Add(1) > 1 {
		return errors.New("injected: store unreachable")
	}
	return f.Backend.Save(ctx, name, data)
}

// TestGCStopsWhenItsLeaseIsLost: a run that cannot refresh its lease stops
// with ErrGCLeaseLost before it deletes anything.
func TestGCStopsWhenItsLeaseIsLost(t *testing.T) {
	dir := t.TempDir()
	lb, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	fb := &failLeaseRefresh{Backend: lb}
	r := newRepoOn(t, fb, InitOptions{ChunkSize: testCS, Password: "pw", KDF: cheapKDF})
	ctx := context.Background()
	im := newImage(t, 44)
	im.create(4*testCS, map[int64][]byte{0: im.random(4 * testCS)})
	first := backupFile(t, r, im.path, nil, DiskOptions{})
	if err := r.DeleteBackup(ctx, first.backup.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	o := fastGC()
	o.LeaseTTL = 200 * time.Millisecond
	o.testHook = func(step string) {
		if step == "mark" {
			time.Sleep(150 * time.Millisecond) // two refreshes fail meanwhile
		}
	}
	_, err = r.GC(ctx, o)
	if !errors.Is(err, ErrGCLeaseLost) || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("gc with failing refreshes: %v; want ErrGCLeaseLost naming the refresh error", err)
	}
	if n := countObjects(t, lb, "chunks/"); n != 4 {
		t.Errorf("%d chunks left, want all 4: nothing may move without a lease", n)
	}
	if n := countObjects(t, lb, "trash/"); n != 0 {
		t.Errorf("%d chunks in the trash, want 0", n)
	}
}
