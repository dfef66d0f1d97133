package api_test

import (
	"bytes"
	"context"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/api"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/repo"
)

// TestBackupDeleteProtect: a member protects, unprotects and deletes its
// project's backups through the API; a protected backup is refused by
// delete (409) and kept by prune, expired or not; another project's
// backup cannot be deleted, protected or unprotected (404, as if it did
// not exist), a reader cannot change any (403); a backup a restore or a
// clone is reading is refused (409) until that run ends; a delete removes
// the record and manifests through the repository's delete and leaves the
// chunks to gc, so the other backups of the same data still read whole.
func TestBackupDeleteProtect(t *testing.T) {
	e := newEnv(t, lab.Options{}, startTemporal(t), api.Config{}, nil)
	ctx := context.Background()
	aliceTok := e.token(t, alice, "alpha")
	bobTok := e.token(t, bob, "beta")
	ritaTok := e.token(t, rita, "alpha")
	adminTok := e.token(t, admin, lab.AdminProject)
	alphaB, betaB := e.backups["alpha"], e.backups["beta"]
	victim := alphaB[0]
	notFound := "Backup " + victim + " could not be found."

	// Another project's member: every change is a 404; the reader: 403.
	for _, c := range []struct{ method, path, action string }{
		{"DELETE", "/v1/backups/" + victim, "backup:delete"},
		{"POST", "/v1/backups/" + victim + "/protect", "backup:protect"},
		{"POST", "/v1/backups/" + victim + "/unprotect", "backup:unprotect"},
	} {
		st, body := e.call(t, bobTok, c.method, c.path, nil, nil)
		wantError(t, "bob: "+c.method+" "+c.path, st, body, 404, notFound)
		st, body = e.call(t, ritaTok, c.method, c.path, nil, nil)
		wantError(t, "the reader: "+c.method+" "+c.path, st, body, 403, msgPolicy(c.action))
	}
	st, body := e.call(t, aliceTok, "DELETE", "/v1/backups/no-such-backup", nil, nil)
	wantError(t, "delete a backup that does not exist", st, body, 404, "Backup no-such-backup could not be found.")

	// Protect: shown as protected, refused by delete, kept by prune even
	// expired.
	var one struct{ Backup api.BackupView }
	if st, body := e.call(t, aliceTok, "POST", "/v1/backups/"+victim+"/protect", nil, &one); st != 200 || !one.Backup.Protected || one.Backup.ID != victim {
		t.Fatalf("alice protects: %d %s", st, body)
	}
	if st, _ := e.call(t, aliceTok, "GET", "/v1/backups/"+victim, nil, &one); st != 200 || !one.Backup.Protected {
		t.Errorf("the backup is not shown protected: %+v", one.Backup)
	}
	st, body = e.call(t, aliceTok, "DELETE", "/v1/backups/"+victim, nil, nil)
	wantError(t, "delete a protected backup", st, body, 409, "Backup "+victim+" is protected; unprotect it first.")
	past := time.Now().Add(-time.Hour)
	if _, err := e.repo.UpdateBackup(ctx, victim, func(b *repo.Backup) error { b.Expires = &past; return nil }); err != nil {
		t.Fatal(err)
	}
	dec, err := e.repo.Prune(ctx, repo.Filter{}, repo.Retention{}, time.Now(), false)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dec {
		if d.Backup.ID == victim && (!d.Keep || d.Reasons[0] != "protected") {
			t.Errorf("prune's decision on the protected, expired backup: %+v", d)
		}
	}
	if _, err := e.repo.LoadBackup(ctx, victim); err != nil {
		t.Fatalf("prune removed the protected backup: %v", err)
	}

	// Unprotect, then delete: gone from show and list; the other backups
	// of the same data read whole (chunks are gc's to free).
	if st, body := e.call(t, aliceTok, "POST", "/v1/backups/"+victim+"/unprotect", nil, &one); st != 200 || one.Backup.Protected {
		t.Fatalf("alice unprotects: %d %s", st, body)
	}
	start := time.Now()
	if st, body := e.call(t, aliceTok, "DELETE", "/v1/backups/"+victim, nil, nil); st != 204 || len(body) != 0 {
		t.Fatalf("alice deletes: %d %s", st, body)
	}
	t.Logf("DELETE /v1/backups/{id}: %v", time.Since(start).Round(time.Microsecond))
	st, body = e.call(t, aliceTok, "GET", "/v1/backups/"+victim, nil, nil)
	wantError(t, "show a deleted backup", st, body, 404, notFound)
	st, body = e.call(t, aliceTok, "DELETE", "/v1/backups/"+victim, nil, nil)
	wantError(t, "delete it again", st, body, 404, notFound)
	var l backupList
	if st, _ := e.call(t, aliceTok, "GET", "/v1/backups", nil, &l); st != 200 || slices.Contains(ids(l.Backups), victim) || len(l.Backups) != len(alphaB)-1 {
		t.Errorf("alpha's backups after the delete: %v", ids(l.Backups))
	}
	if _, err := e.repo.LoadManifest(ctx, victim+"/vm1/root"); err == nil {
		t.Error("the deleted backup's manifest is still there")
	}
	want := bytes.Repeat([]byte("raksha"), 20000)
	for _, id := range append(slices.Clone(alphaB[1:]), betaB...) {
		d, err := e.repo.OpenDisk(ctx, id+"/vm1/root", repo.ReaderOptions{})
		if err != nil {
			t.Fatalf("backup %s after the delete: %v", id, err)
		}
		got, err := io.ReadAll(io.NewSectionReader(d, 0, d.Size()))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("backup %s does not read whole after the delete: %v", id, err)
		}
	}
	// A backup being restored, or cloned, is not deleted until the run
	// ends (the dev server's worker runs the workflows, no activity: the
	// runs stay in their first phase).
	var rs struct{ Restore api.RestoreView }
	if st, body := e.call(t, aliceTok, "POST", "/v1/restores", map[string]any{"restore": map[string]any{"backup_id": alphaB[1]}}, &rs); st != 202 {
		t.Fatalf("alice restores: %d %s", st, body)
	}
	var cl struct{ Clone api.CloneView }
	if st, body := e.call(t, aliceTok, "POST", "/v1/clones", map[string]any{"clone": map[string]any{"backup_id": alphaB[2], "name": "del-test"}}, &cl); st != 202 {
		t.Fatalf("alice clones: %d %s", st, body)
	}
	// Refused at once: the server knows the runs it started before
	// Temporal's (eventually consistent) list shows them.
	for _, c := range []struct{ backup, run string }{{alphaB[1], rs.Restore.ID}, {alphaB[2], cl.Clone.ID}} {
		st, body := e.call(t, aliceTok, "DELETE", "/v1/backups/"+c.backup, nil, nil)
		if st == 204 {
			t.Fatalf("backup %s deleted while %s reads it", c.backup, c.run)
		}
		wantError(t, "delete "+c.backup+" while "+c.run+" runs", st, body, 409,
			"Backup "+c.backup+" is being restored or cloned by "+c.run+"; delete it once that run has ended.")
	}
	for _, p := range []string{"/v1/restores/" + rs.Restore.ID + "/cancel", "/v1/clones/" + cl.Clone.ID + "/cancel"} {
		if st, body := e.call(t, aliceTok, "POST", p, nil, nil); st != 202 {
			t.Fatalf("%s: %d %s", p, st, body)
		}
	}
	waitFor(t, "the delete of the restored backup once the restore ended", func() bool {
		st, _ := e.call(t, aliceTok, "DELETE", "/v1/backups/"+alphaB[1], nil, nil)
		return st == 204
	})

	// Beta's backups are untouched; the admin may protect them.
	if st, _ := e.call(t, bobTok, "GET", "/v1/backups", nil, &l); st != 200 || len(l.Backups) != len(betaB) {
		t.Errorf("beta's backups: %d %v", st, ids(l.Backups))
	}
	if st, body := e.call(t, adminTok, "POST", "/v1/backups/"+betaB[0]+"/protect", nil, &one); st != 200 || !one.Backup.Protected {
		t.Errorf("the admin protects beta's backup: %d %s", st, body)
	}
	e.checkLogs(t)
}
