package repo

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/repo/backend/mem"
)

// lostAnswer stores every object but reports a failure for the names that
// match: a store that took the request and whose answer was lost.
type lostAnswer struct {
	backend.Backend
	match func(name string) bool
}

func (l *lostAnswer) Save(ctx context.Context, name string, data []byte) error {
	if err := l.Backend.Save(ctx, name, data); err != nil {
		return err
	}
	if l.match(name) {
		return errors.New("connection reset by peer (answer lost)")
	}
	return nil
}

// TestAbortAfterCommitLostAnswer: a Commit whose record reached the store
// but whose answer was lost reports failure; the Abort that follows (the CLI
// and the workflows abort a failed commit) must leave no backup visible and
// the repository sound. Before the fix Abort removed the manifests and left
// the record: a listed backup whose disks were gone, and Check failed.
func TestAbortAfterCommitLostAnswer(t *testing.T) {
	ctx := context.Background()
	be := &lostAnswer{Backend: mem.New(), match: func(string) bool { return false }}
	r := newRepoOn(t, be, InitOptions{ChunkSize: testCS, Password: "pw", KDF: cheapKDF})
	im := newImage(t, 77)
	im.create(4*testCS, map[int64][]byte{0: im.random(4 * testCS)})
	src, err := openFile(im.path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	s, err := r.StartBackup(ctx, BackupSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.BackupDisk(ctx, "vm", "disk", src, DiskOptions{}); err != nil {
		t.Fatal(err)
	}
	be.match = func(name string) bool { return strings.HasPrefix(name, "backups/") }
	if _, err := s.Commit(ctx); err == nil {
		t.Fatal("commit whose record's answer was lost reported success")
	}
	if err := s.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	bs, err := r.ListBackups(ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 0 {
		t.Errorf("after the failed commit and Abort, %d backups listed (%s), want none", len(bs), bs[0].ID)
	}
	if rep, err := r.Check(ctx); err != nil {
		t.Errorf("check after Abort: %v (%v)", err, rep.Errors)
	}
	if _, err := s.Commit(ctx); err == nil {
		t.Error("commit after Abort succeeded")
	}
}

// TestStartBackupLostAnswerLeavesNoMarker: a StartBackup whose marker
// reached the store but whose answer was lost returns an error and removes
// the marker, since no session exists to abort.
func TestStartBackupLostAnswerLeavesNoMarker(t *testing.T) {
	ctx := context.Background()
	be := &lostAnswer{Backend: mem.New(), match: func(string) bool { return false }}
	r := newRepoOn(t, be, InitOptions{ChunkSize: testCS, Password: "pw", KDF: cheapKDF})
	be.match = func(name string) bool { return strings.HasPrefix(name, "sessions/") }
	if _, err := r.StartBackup(ctx, BackupSpec{}); err == nil {
		t.Fatal("StartBackup whose marker's answer was lost reported success")
	}
	if n := countObjects(t, be, "sessions/"); n != 0 {
		t.Errorf("%d session markers left by the failed start, want 0", n)
	}
}
