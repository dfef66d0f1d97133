package repo

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func TestDecideRetention(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	var bs []*Backup
	// one backup a day at 02:00 for 40 days, plus an extra one today at 10:00
	for d := 40; d >= 0; d-- {
		bs = append(bs, &Backup{ID: fmt.Sprintf("d%02d", d), Created: now.AddDate(0, 0, -d).Add(-10 * time.Hour), Labels: map[string]string{"w": "db"}})
	}
	bs = append(bs, &Backup{ID: "today2", Created: now.Add(-2 * time.Hour), Labels: map[string]string{"w": "db"}})
	// another group is pruned separately
	bs = append(bs, &Backup{ID: "other", Created: now.AddDate(0, 0, -100), Labels: map[string]string{"w": "web"}})
	past := now.Add(-time.Hour)
	bs[5].Expires = &past // d35: expired
	bs[6].Protected = true
	bs[6].Expires = &past // d34: expired but protected
	dec := Decide(bs, Retention{Daily: 7, Weekly: 4}, now)
	kept := map[string]bool{}
	for _, d := range dec {
		if d.Keep {
			kept[d.Backup.ID] = true
		}
	}
	for _, id := range []string{"today2", "d01", "d02", "d03", "d04", "d05", "d06", "d34", "other"} {
		if !kept[id] {
			t.Errorf("%s should be kept", id)
		}
	}
	for _, id := range []string{"d00", "d35", "d40"} {
		if kept[id] {
			t.Errorf("%s should go (daily keeps the newest of each day; d35 expired)", id)
		}
	}
	weekly := 0
	for _, d := range dec {
		for _, r := range d.Reasons {
			if len(r) > 6 && r[:6] == "weekly" {
				weekly++
			}
		}
	}
	if weekly != 4+1 {
		t.Errorf("%d backups kept as weekly, want 4 in group db and 1 in group web", weekly)
	}
	// Without any rule nothing but expired backups goes.
	for _, d := range Decide(bs, Retention{}, now) {
		if d.Keep == (d.Backup.ID == "d35") {
			t.Errorf("no rules: %s keep=%v", d.Backup.ID, d.Keep)
		}
	}
}

// TestPruneKeepsBackupProtectedAfterListing: a backup prune decided to
// delete but that was protected between the listing and the delete (a
// tenant's protect through the API racing a retention run) is kept, its
// decision says so, and prune still deletes the others instead of failing.
func TestPruneKeepsBackupProtectedAfterListing(t *testing.T) {
	r, _ := newLocalRepo(t)
	ctx := context.Background()
	im := newImage(t, 7)
	im.create(4*testCS, nil)
	labels := map[string]string{"workload": "web"}
	a := backupFile(t, r, im.path, labels, DiskOptions{}).backup
	b := backupFile(t, r, im.path, labels, DiskOptions{}).backup
	past := time.Now().Add(-time.Hour)
	for _, id := range []string{a.ID, b.ID} {
		if _, err := r.UpdateBackup(ctx, id, func(x *Backup) error { x.Expires = &past; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	// The listing reads a unprotected; right after, a is protected.
	match := func(x *Backup) bool {
		if x.ID == a.ID && !x.Protected {
			if _, err := r.UpdateBackup(ctx, a.ID, func(y *Backup) error { y.Protected = true; return nil }); err != nil {
				t.Fatal(err)
			}
		}
		return true
	}
	dec, err := r.Prune(ctx, Filter{Match: match}, Retention{}, time.Now(), false)
	if err != nil {
		t.Fatalf("prune: %v", err)
	}
	got := map[string]PruneDecision{}
	for _, d := range dec {
		got[d.Backup.ID] = d
	}
	if d := got[a.ID]; !d.Keep || len(d.Reasons) != 1 || d.Reasons[0] != "protected" {
		t.Errorf("the backup protected after the listing: %+v", d)
	}
	if d := got[b.ID]; d.Keep {
		t.Errorf("the other expired backup: %+v", d)
	}
	if _, err := r.LoadBackup(ctx, a.ID); err != nil {
		t.Errorf("the protected backup is gone: %v", err)
	}
	if _, err := r.LoadBackup(ctx, b.ID); err == nil {
		t.Error("the unprotected expired backup is still there")
	}
}
