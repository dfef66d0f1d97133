package repo

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/raksha-backup/raksha/internal/repo/backend"
)

// Drill results.
const (
	DrillPass = "pass"
	DrillFail = "fail"
)

// Drill is the record of one restore drill of a backup: the backup cloned
// into a drill project, booted, its health check run in every guest, and the
// clone torn down. It is stored as its own small sealed object,
// drills/BACKUP/ID, beside the backup record, which a drill never changes.
type Drill struct {
	Schema int    `json:"schema"`
	ID     string `json:"id"`
	Backup string `json:"backup"`
	// Workload is the backup's workload; Policy the drill policy, if any.
	Workload string `json:"workload,omitempty"`
	Policy   string `json:"policy,omitempty"`
	// Project is the drill project the clone went into; Clone the clone's
	// name (the raksha.clone label of what it made).
	Project string `json:"project,omitempty"`
	Clone   string `json:"clone,omitempty"`
	// Workflow is the drill's workflow id and run.
	Workflow string    `json:"workflow,omitempty"`
	RunID    string    `json:"run_id,omitempty"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Result is DrillPass or DrillFail.
	Result string `json:"result"`
	// TimeToReady is from the clone's start to the health check passing in
	// every guest (0 when it never did).
	TimeToReady time.Duration `json:"time_to_ready,omitempty"`
	// Guests are the health checks run, one per guest.
	Guests []DrillGuest `json:"guests,omitempty"`
	// Error says why a failed drill failed (the guest and the check's
	// output tail for a failed health check).
	Error string `json:"error,omitempty"`
	// Teardown is "done" when everything the clone made is gone, else
	// what was left.
	Teardown string `json:"teardown,omitempty"`
}

// DrillGuest is the health check of one guest of a drill.
type DrillGuest struct {
	VM       string  `json:"vm"`
	ExitCode int     `json:"exit_code"`
	Seconds  float64 `json:"seconds"`
	// OutputTail is the end of the check's output (stdout then stderr).
	OutputTail string `json:"output_tail,omitempty"`
}

func drillName(backupID, id string) string { return "drills/" + backupID + "/" + id }
func drillAAD(backupID, id string) string  { return "drill:" + backupID + "/" + id }

// SaveDrill stores the record of a drill of an existing backup. Saving the
// same record again (a retried activity) overwrites it with the same
// content; the backup record itself is never touched.
func (r *Repository) SaveDrill(ctx context.Context, d *Drill) error {
	if !ValidName(d.Backup) || !ValidName(d.ID) {
		return fmt.Errorf("save drill %q of backup %q: invalid id", d.ID, d.Backup)
	}
	if d.Result != DrillPass && d.Result != DrillFail {
		return fmt.Errorf("save drill %s of backup %s: result %q: want %s or %s", d.ID, d.Backup, d.Result, DrillPass, DrillFail)
	}
	if _, err := r.LoadBackup(ctx, d.Backup); err != nil {
		if backend.IsNotFound(err) {
			return fmt.Errorf("save drill %s: backup %s: %w", d.ID, d.Backup, ErrNoBackup)
		}
		return fmt.Errorf("save drill %s: %w", d.ID, err)
	}
	d.Schema = SchemaVersion
	if err := r.saveJSON(ctx, drillName(d.Backup, d.ID), drillAAD(d.Backup, d.ID), d); err != nil {
		return fmt.Errorf("save drill %s of backup %s: %w", d.ID, d.Backup, err)
	}
	return nil
}

// ListDrills returns the drills of a backup, oldest first (by start). A
// damaged record fails the listing, naming it.
func (r *Repository) ListDrills(ctx context.Context, backupID string) ([]*Drill, error) {
	if !ValidName(backupID) {
		return nil, fmt.Errorf("list drills: invalid backup id %q", backupID)
	}
	return r.listDrills(ctx, "drills/"+backupID+"/")
}

// LastDrills returns the newest drill of every backup that has one, by
// backup id, in one listing of the drill records.
func (r *Repository) LastDrills(ctx context.Context) (map[string]*Drill, error) {
	all, err := r.listDrills(ctx, "drills/")
	if err != nil {
		return nil, err
	}
	out := map[string]*Drill{}
	for _, d := range all {
		out[d.Backup] = d // oldest first: the last one wins
	}
	return out, nil
}

func (r *Repository) listDrills(ctx context.Context, prefix string) ([]*Drill, error) {
	var names []string
	err := r.be.List(ctx, prefix, func(in backend.Info) error {
		names = append(names, in.Name)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list drills: %w", err)
	}
	var out []*Drill
	for _, n := range names {
		backupID, id, ok := strings.Cut(strings.TrimPrefix(n, "drills/"), "/")
		if !ok || !ValidName(backupID) || !ValidName(id) {
			continue // not a drill record of this format
		}
		var d Drill
		if err := r.loadJSON(ctx, n, drillAAD(backupID, id), &d); err != nil {
			return nil, fmt.Errorf("list drills: %w", err)
		}
		if d.Schema != SchemaVersion || d.ID != id || d.Backup != backupID {
			return nil, fmt.Errorf("list drills: %s: %w: schema %d, id %q, backup %q", n, ErrCorrupt, d.Schema, d.ID, d.Backup)
		}
		out = append(out, &d)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Started.Equal(out[j].Started) {
			return out[i].Started.Before(out[j].Started)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// deleteDrills removes the drill records of a backup (after its record is
// gone; what fails here is left to gc).
func (r *Repository) deleteDrills(ctx context.Context, backupID string) error {
	var names []string
	err := r.be.List(ctx, "drills/"+backupID+"/", func(in backend.Info) error {
		names = append(names, in.Name)
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete drills of %s: %w (gc removes them later)", backupID, err)
	}
	for _, n := range names {
		if err := r.be.Delete(ctx, n); err != nil && !backend.IsNotFound(err) {
			return fmt.Errorf("delete drills of %s: %w (gc removes them later)", backupID, err)
		}
	}
	return nil
}
