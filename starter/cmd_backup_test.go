package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
)

// TestBackupListShowsDataAndFreezeWindows: the table of `backup list` (the
// demo's summary) has each backup's read, new, reused and stored bytes,
// its consistency and the freeze window of each VM; `backup show` too.
func TestBackupListShowsDataAndFreezeWindows(t *testing.T) {
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "64KiB")
	img := writeImage(t, 1<<20)
	var first diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", img)), &first); err != nil {
		t.Fatal(err)
	}
	c.must("disk", "backup", img) // the same image again: all reused
	ctx := context.Background()
	be, err := local.Open(strings.TrimPrefix(c.env["RAKSHA_REPO"], "file://"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, be, "pw", repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.UpdateBackup(ctx, first.ID, func(b *repo.Backup) error {
		b.Consistency = "app"
		b.FreezeWindows = map[string]time.Duration{"web": 640 * time.Millisecond, "db": 1500 * time.Millisecond}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	list := c.must("backup", "list")
	t.Logf("backup list:\n%s", list)
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 3 {
		t.Fatalf("list:\n%s", list)
	}
	for _, col := range []string{"READ", "NEW DATA", "REUSED", "STORED", "CONSISTENCY", "FREEZE WINDOWS"} {
		if !strings.Contains(lines[0], col) {
			t.Errorf("header %q lacks %s", lines[0], col)
		}
	}
	row := lines[1]
	if !strings.Contains(row, first.ID) {
		row = lines[2]
	}
	for _, want := range []string{"app", "db 1.50s, web 0.64s", humanBytes(b.Stats.BytesNew), humanBytes(b.Stats.BytesStored), humanBytes(b.Stats.BytesReused)} {
		if !strings.Contains(row, want) {
			t.Errorf("row of %s lacks %q:\n%s", first.ID, want, list)
		}
	}
	other := lines[2]
	if other == row {
		other = lines[1]
	}
	if !strings.Contains(other, "  -  ") {
		t.Errorf("a backup without freeze windows or consistency shows no '-':\n%s", list)
	}
	show := c.must("backup", "show", first.ID)
	if !strings.Contains(show, "frozen      db 1.50s, web 0.64s") || !strings.Contains(show, "reused "+humanBytes(b.Stats.BytesReused)) {
		t.Errorf("show:\n%s", show)
	}
}
