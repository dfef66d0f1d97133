package watchdog_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/freezerec"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/guest/agenttest"
	"github.com/raksha-backup/raksha/internal/watchdog"
)

// shortDir returns a directory with a short path (unix socket paths are
// limited to 107 bytes).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "rkw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// deadGuest is a fake guest left frozen by a freezer that died: frozen,
// its lock free, its freeze recorded with deadline dl.
func deadGuest(t *testing.T, dl time.Time) (*agenttest.Fake, *freezerec.Dir, string) {
	t.Helper()
	dir := shortDir(t)
	f := agenttest.NewFake(t, filepath.Join(dir, "qga.sock"))
	f.SetFrozen(true)
	recs, err := freezerec.Open(filepath.Join(dir, "freezes"))
	if err != nil {
		t.Fatal(err)
	}
	rec := freezerec.Record{ID: "f1", Route: freezerec.Route{Kind: freezerec.Socket, Instance: "vm1", Socket: f.Path},
		Deadline: dl, Owner: "a dead freezer", PID: 1 << 22}
	if err := recs.Write(rec); err != nil {
		t.Fatal(err)
	}
	key, _ := rec.Route.Key()
	return f, recs, key
}

// run runs a watchdog on recs until it ends by itself (no parent, no
// record left) or the test's limit.
func run(t *testing.T, recs *freezerec.Dir, parent int) <-chan error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		defer cancel()
		done <- watchdog.Run(ctx, watchdog.Options{Dir: recs.Path(), Margin: 200 * time.Millisecond, Poll: 20 * time.Millisecond, ParentPID: parent})
	}()
	t.Cleanup(func() { cancel(); <-finished })
	return done
}

// waitThawed waits for the fake to be thawed and returns when it saw it.
func waitThawed(t *testing.T, f *agenttest.Fake, limit time.Duration) time.Time {
	t.Helper()
	end := time.Now().Add(limit)
	for f.Frozen() {
		if time.Now().After(end) {
			t.Fatalf("guest still frozen after %v", limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Now()
}

// TestThawsAtDeadline: a guest whose freezer died is thawed by the
// watchdog at the recorded deadline plus the margin, not before; the
// record goes, and the watchdog (no parent) ends once none is left.
func TestThawsAtDeadline(t *testing.T) {
	dl := time.Now().Add(700 * time.Millisecond)
	f, recs, key := deadGuest(t, dl)
	done := run(t, recs, 0)
	time.Sleep(400 * time.Millisecond)
	if !f.Frozen() {
		t.Fatal("thawed before the deadline")
	}
	at := waitThawed(t, f, 5*time.Second)
	late := at.Sub(dl)
	if late < 200*time.Millisecond || late > 1500*time.Millisecond {
		t.Fatalf("thawed %v after the deadline; want the 200ms margin and a poll", late)
	}
	t.Logf("thawed %v after the deadline (margin 200ms)", late.Round(time.Millisecond))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watchdog without a parent did not end once no record remained")
	}
	if _, err := recs.Read(key); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record after the thaw: %v; want gone", err)
	}
	if n := f.Calls("guest-fsfreeze-thaw"); n != 1 {
		t.Fatalf("%d thaws, want 1", n)
	}
}

// TestLeavesALiveOwner: while a live process holds the guest's lock (its
// own guard is in charge) the watchdog does not thaw, whatever the record
// says; once the lock is free it does.
func TestLeavesALiveOwner(t *testing.T) {
	f, recs, key := deadGuest(t, time.Now().Add(-time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	owner, err := guest.Dial(ctx, f.Path, guest.Options{Owner: "a live freezer"})
	if err != nil {
		t.Fatal(err)
	}
	done := run(t, recs, 0)
	time.Sleep(4 * time.Second) // the watchdog waits 3 s for the lock, then backs off
	if !f.Frozen() {
		t.Fatal("the watchdog thawed a guest whose lock a live owner holds")
	}
	if _, err := recs.Read(key); err != nil {
		t.Fatalf("record while the owner lives: %v", err)
	}
	owner.Close() // no freeze of its own to thaw: the guest stays frozen
	waitThawed(t, f, 10*time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestNewerFreezeNotThawed: a record replaced by a newer freeze of the
// guest (another id, a later deadline) is acted on at the newer deadline
// only.
func TestNewerFreezeNotThawed(t *testing.T) {
	f, recs, _ := deadGuest(t, time.Now().Add(-time.Second))
	rec, err := recs.Read("socket-vm1")
	if err != nil {
		t.Fatal(err)
	}
	rec.ID, rec.Deadline = "f2", time.Now().Add(1500*time.Millisecond)
	if err := recs.Write(*rec); err != nil {
		t.Fatal(err)
	}
	done := run(t, recs, 0)
	time.Sleep(1200 * time.Millisecond)
	if !f.Frozen() {
		t.Fatal("thawed before the newer freeze's deadline")
	}
	late := waitThawed(t, f, 5*time.Second).Sub(rec.Deadline)
	if late < 0 {
		t.Fatalf("thawed %v before the newer deadline", -late)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestGoneGuestRecordRemoved: the record of a guest that no longer runs
// (its socket has no listener) is removed without a thaw.
func TestGoneGuestRecordRemoved(t *testing.T) {
	f, recs, key := deadGuest(t, time.Now().Add(-time.Second))
	f.Close()
	done := run(t, recs, 0)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watchdog did not end")
	}
	if _, err := recs.Read(key); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record of a gone guest: %v; want removed", err)
	}
}

// TestRunsWhileParentLives: with a live parent the watchdog runs on
// without records (ready for the next freeze) and serves a record written
// later; a second watchdog for the same directory waits for the first,
// and one whose parent is gone ends at once.
func TestRunsWhileParentLives(t *testing.T) {
	f, recs, _ := deadGuest(t, time.Now().Add(time.Hour))
	if _, err := recs.Remove("socket-vm1", "f1"); err != nil {
		t.Fatal(err)
	}
	done := run(t, recs, os.Getpid())
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("watchdog ended while its parent lives: %v", err)
	default:
	}
	// A second one, without a parent, leaves the directory to the first.
	if err := watchdog.Run(context.Background(), watchdog.Options{Dir: recs.Path(), Poll: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	// A freeze recorded now is served by the running watchdog.
	j, err := recs.Journal(freezerec.Route{Kind: freezerec.Socket, Instance: "vm1", Socket: f.Path})
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Begin("f3", time.Now().Add(100*time.Millisecond), "late freezer"); err != nil {
		t.Fatal(err)
	}
	waitThawed(t, f, 5*time.Second)
}

// TestEndsWhenItsDirectoryIsGone: a watchdog whose directory was removed
// (a freezer's work directory deleted, records and all) ends once its
// parent is gone, instead of running on forever.
func TestEndsWhenItsDirectoryIsGone(t *testing.T) {
	_, recs, _ := deadGuest(t, time.Now().Add(time.Hour))
	parent := exec.Command("sleep", "1")
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	done := run(t, recs, parent.Process.Pid)
	time.Sleep(100 * time.Millisecond)
	if err := os.RemoveAll(recs.Path()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("watchdog ended while its parent lives: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	parent.Wait()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watchdog of a removed directory runs on 5 s after its parent ended")
	}
}

// TestFreezeJournal: a client with a journal records its freeze before
// sending it and removes the record after the thaw (by Thaw or by its
// guard), so a watchdog never sees a freeze its owner ended.
func TestFreezeJournal(t *testing.T) {
	dir := shortDir(t)
	f := agenttest.NewFake(t, filepath.Join(dir, "qga.sock"))
	recs, err := freezerec.Open(filepath.Join(dir, "freezes"))
	if err != nil {
		t.Fatal(err)
	}
	route := freezerec.Route{Kind: freezerec.Socket, Instance: "vm1", Socket: f.Path}
	j, err := recs.Journal(route)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := guest.Dial(ctx, f.Path, guest.Options{Owner: "journal test", Journal: j})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, byGuard := range []bool{false, true} {
		h, err := c.Freeze(ctx, guest.FreezeOptions{Timeout: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		rec, err := recs.Read("socket-vm1")
		if err != nil {
			t.Fatalf("no record while frozen: %v", err)
		}
		if rec.ID != h.ID || !rec.Deadline.Equal(h.Deadline.UTC()) || rec.Owner != "journal test" || rec.Route != route {
			t.Fatalf("record %+v for freeze %s deadline %v", rec, h.ID, h.Deadline)
		}
		if byGuard {
			<-h.Done()
		}
		if rep, err := h.Thaw(ctx); err != nil || rep.GuardThawed != byGuard {
			t.Fatalf("thaw: %+v, %v", rep, err)
		}
		if _, err := recs.Read("socket-vm1"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("record after the thaw (guard %v): %v; want gone", byGuard, err)
		}
	}
	// A freeze that cannot be recorded is not sent.
	if err := os.RemoveAll(recs.Path()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Freeze(ctx, guest.FreezeOptions{Timeout: time.Second}); err == nil {
		t.Fatal("freeze without a record succeeded")
	}
	if f.Frozen() || f.Calls("guest-fsfreeze-freeze") != 2 {
		t.Fatalf("frozen %v after %d freezes; want the unrecorded one never sent", f.Frozen(), f.Calls("guest-fsfreeze-freeze"))
	}
}
