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

// TestBackupListShowsLastDrill: `backup list` shows each backup's last drill
// (result and when; json: last_drill), `backup show` all its drills with
// each guest's output tail.
func TestBackupListShowsLastDrill(t *testing.T) {
	c := newCLI(t)
	c.must("repo", "init", "--chunk-size", "64KiB")
	img := writeImage(t, 1<<20)
	var first diskBackupResult
	if err := json.Unmarshal([]byte(c.must("disk", "backup", "-f", "json", img)), &first); err != nil {
		t.Fatal(err)
	}
	c.must("disk", "backup", img)
	ctx := context.Background()
	be, err := local.Open(strings.TrimPrefix(c.env["RAKSHA_REPO"], "file://"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, be, "pw", repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().Add(-time.Hour).UTC()
	for _, d := range []*repo.Drill{
		{ID: "d1", Backup: first.ID, Started: t0, Finished: t0.Add(time.Minute), Result: repo.DrillPass, TimeToReady: 42 * time.Second, Teardown: "done",
			Guests: []repo.DrillGuest{{VM: "demo-1", OutputTail: "OK /data/a"}}},
		{ID: "d2", Backup: first.ID, Started: t0.Add(30 * time.Minute), Finished: t0.Add(31 * time.Minute), Result: repo.DrillFail, Teardown: "done",
			Error: "health check health in demo-1 exited 1: BAD /data/a", Guests: []repo.DrillGuest{{VM: "demo-1", ExitCode: 1, OutputTail: "checking\nBAD /data/a"}}},
	} {
		if err := r.SaveDrill(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	list := c.must("backup", "list")
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "LAST DRILL") {
		t.Fatalf("list:\n%s", list)
	}
	for _, l := range lines[1:] {
		want := "fail " + t0.Add(31*time.Minute).Local().Format("2006-01-02 15:04")
		if !strings.Contains(l, first.ID) {
			want = "  -  "
		}
		if !strings.Contains(l, want) {
			t.Errorf("row lacks %q:\n%s", want, list)
		}
	}
	var js []struct {
		ID        string      `json:"id"`
		Disks     []any       `json:"disks"`
		LastDrill *repo.Drill `json:"last_drill"`
	}
	if err := json.Unmarshal([]byte(c.must("backup", "list", "-f", "json")), &js); err != nil {
		t.Fatal(err)
	}
	if len(js) != 2 {
		t.Fatalf("json list %+v", js)
	}
	for _, b := range js {
		if len(b.Disks) != 1 {
			t.Errorf("json backup %s lost its record's fields: %+v", b.ID, b)
		}
		switch {
		case b.ID == first.ID && (b.LastDrill == nil || b.LastDrill.ID != "d2" || b.LastDrill.Result != "fail"):
			t.Errorf("json last drill of %s: %+v", b.ID, b.LastDrill)
		case b.ID != first.ID && b.LastDrill != nil:
			t.Errorf("json last drill of undrilled %s: %+v", b.ID, b.LastDrill)
		}
	}
	show := c.must("backup", "show", first.ID)
	for _, want := range []string{"drill d1 ", "pass ", "(ready in 42s)", "drill d2 ", "exited 1: BAD /data/a", "demo-1: exit 1", "    | BAD /data/a"} {
		if !strings.Contains(show, want) {
			t.Errorf("show lacks %q:\n%s", want, show)
		}
	}
}
