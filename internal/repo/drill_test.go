package repo

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"
)

// TestDrillRecords: drill records are stored beside a backup without
// changing its record, listed oldest first, the newest per backup found in
// one listing, refused for a backup that does not exist, and removed with
// the backup.
func TestDrillRecords(t *testing.T) {
	ctx := context.Background()
	r, _ := newLocalRepo(t)
	im := newImage(t, 7)
	im.create(4*testCS, map[int64][]byte{0: im.random(testCS)})
	b1 := backupFile(t, r, im.path, nil, DiskOptions{}).backup
	b2 := backupFile(t, r, im.path, nil, DiskOptions{}).backup
	before, err := r.LoadBackup(ctx, b1.ID)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	d1 := &Drill{ID: "d1", Backup: b1.ID, Workload: "demo", Started: t0, Finished: t0.Add(time.Minute), Result: DrillFail,
		Error: "health check in demo-1 exited 1", Guests: []DrillGuest{{VM: "demo-1", ExitCode: 1, OutputTail: "BAD"}}, Teardown: "done"}
	d2 := &Drill{ID: "d2", Backup: b1.ID, Workload: "demo", Started: t0.Add(time.Hour), Finished: t0.Add(time.Hour + time.Minute),
		Result: DrillPass, TimeToReady: 40 * time.Second, Teardown: "done"}
	d3 := &Drill{ID: "d3", Backup: b2.ID, Started: t0, Result: DrillPass}
	for _, d := range []*Drill{d2, d1, d3} {
		if err := r.SaveDrill(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	after, err := r.LoadBackup(ctx, b1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Errorf("a drill changed the backup record:\n%+v\n%+v", before, after)
	}
	list, err := r.ListDrills(ctx, b1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != "d1" || list[1].ID != "d2" || list[0].Guests[0].OutputTail != "BAD" || list[1].TimeToReady != 40*time.Second {
		t.Fatalf("drills of %s: %+v", b1.ID, list)
	}
	last, err := r.LastDrills(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(last) != 2 || last[b1.ID].ID != "d2" || last[b2.ID].ID != "d3" {
		t.Fatalf("last drills %+v", last)
	}
	if err := r.SaveDrill(ctx, &Drill{ID: "d4", Backup: "nosuchbackup", Result: DrillPass}); !errors.Is(err, ErrNoBackup) {
		t.Errorf("drill of a missing backup: %v, want ErrNoBackup", err)
	}
	if err := r.SaveDrill(ctx, &Drill{ID: "d5", Backup: b1.ID, Result: "maybe"}); err == nil {
		t.Error("a drill with result maybe was saved")
	}
	if err := r.DeleteBackup(ctx, b1.ID); err != nil {
		t.Fatal(err)
	}
	last, err = r.LastDrills(ctx)
	if err != nil || len(last) != 1 || last[b2.ID] == nil {
		t.Fatalf("after deleting %s: %+v %v", b1.ID, last, err)
	}
}

// TestGCRemovesOrphanDrills: the drill records of a backup whose record is
// gone (a delete that stopped before them) are removed by gc; those of a
// live backup stay.
func TestGCRemovesOrphanDrills(t *testing.T) {
	ctx := context.Background()
	r, _ := newLocalRepo(t)
	im := newImage(t, 9)
	im.create(2*testCS, map[int64][]byte{0: im.random(testCS)})
	gone := backupFile(t, r, im.path, nil, DiskOptions{}).backup
	live := backupFile(t, r, im.path, nil, DiskOptions{}).backup
	for _, b := range []*Backup{gone, live} {
		if err := r.SaveDrill(ctx, &Drill{ID: "d1", Backup: b.ID, Started: time.Now(), Result: DrillPass}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.be.Delete(ctx, backupName(gone.ID)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	st, err := r.GC(ctx, fastGC())
	if err != nil {
		t.Fatal(err)
	}
	last, err := r.LastDrills(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.OrphanDrills != 1 || len(last) != 1 || last[live.ID] == nil {
		t.Errorf("gc: %d orphan drills; drills left %v; want only %s's", st.OrphanDrills, last, live.ID)
	}
}
