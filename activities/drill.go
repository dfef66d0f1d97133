package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/internal/repo"
)

// NewestBackupInput names the workload whose newest backup a drill takes.
type NewestBackupInput struct {
	Repository string `json:"repository"`
	Workload   string `json:"workload"`
	// Project, when set, keeps only backups captured in that project (their
	// label project=<Project>).
	Project string `json:"project,omitempty"`
}

// NewestBackup is the newest committed backup of a workload.
type NewestBackup struct {
	BackupID string    `json:"backup_id"`
	Created  time.Time `json:"created"`
	// VMs are the names of the backup's VMs.
	VMs []string `json:"vms"`
}

// FindNewestBackup returns the newest committed backup (one whose record
// exists) labelled workload=<Workload> (and, when Project is given, whose
// captured project is that one, named by name or id).
// None fails with the non-retryable type ErrNotFound.
func (a *Activities) FindNewestBackup(ctx context.Context, in NewestBackupInput) (*NewestBackup, error) {
	if in.Workload == "" {
		return nil, invalid("find the newest backup: no workload")
	}
	r, err := a.repo(ctx, in.Repository)
	if err != nil {
		return nil, err
	}
	filter := repo.Filter{Labels: map[string]string{LabelWorkload: in.Workload}}
	if in.Project != "" {
		// Records keep the captured project's id (RecordProject); the
		// policy may name it.
		id, err := a.ResolveProject(ctx, ResolveProjectInput{Project: in.Project})
		if err != nil {
			return nil, fmt.Errorf("find the newest backup of %s: %w", in.Workload, err)
		}
		filter = workloadFilter(in.Workload, id)
	}
	list, err := r.ListBackups(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("find the newest backup of %s: %w", in.Workload, err)
	}
	if len(list) == 0 {
		where := ""
		if in.Project != "" {
			where = " in project " + in.Project
		}
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("workload %s has no backup%s in repository %s", in.Workload, where, in.Repository), ErrNotFound, nil)
	}
	b := list[len(list)-1]
	out := &NewestBackup{BackupID: b.ID, Created: b.Created}
	seen := map[string]bool{}
	for _, d := range b.Disks {
		if !seen[d.VM] {
			seen[d.VM] = true
			out.VMs = append(out.VMs, d.VM)
		}
	}
	return out, nil
}

// RecordDrillInput is the record of one drill, for the repository.
type RecordDrillInput struct {
	Repository string     `json:"repository"`
	Drill      repo.Drill `json:"drill"`
}

// RecordDrill stores a drill's record beside its backup
// (repo.Repository.SaveDrill); a retry writes the same record again. A
// backup deleted meanwhile fails with the non-retryable type ErrNotFound.
func (a *Activities) RecordDrill(ctx context.Context, in RecordDrillInput) error {
	r, err := a.repo(ctx, in.Repository)
	if err != nil {
		return err
	}
	d := in.Drill
	if err := r.SaveDrill(ctx, &d); err != nil {
		if errors.Is(err, repo.ErrNoBackup) {
			return temporal.NewNonRetryableApplicationError(err.Error(), ErrNotFound, err)
		}
		return fmt.Errorf("record drill: %w", err)
	}
	return nil
}
