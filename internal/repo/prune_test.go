package repo

import (
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
