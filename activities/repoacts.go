package activities

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/internal/metrics"
	"github.com/raksha-backup/raksha/internal/repo"
)

// Begin discovers the workload, finds each disk's base (the newest committed
// backup of the workload that has the disk), and opens the repository
// session with the captured metadata. A retry with the same backup id joins
// the session already opened.
func (a *Activities) Begin(ctx context.Context, in BeginInput) (*BeginResult, error) {
	if a.cfg.Discoverer == nil {
		return nil, invalid("this worker has no cloud (not a control worker)")
	}
	r, err := a.repo(ctx, in.Repository)
	if err != nil {
		return nil, err
	}
	vms, source, err := a.cfg.Discoverer.Discover(ctx, in.Selector, in.Project)
	if err != nil {
		return nil, fmt.Errorf("discover %s: %w", in.Workload, err)
	}
	if len(vms) == 0 {
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("workload %s: no server matches the selector", in.Workload), ErrNotFound, nil)
	}
	// The workload is (project, name): the project discovery was scoped
	// to, as its captured metadata says. Bases come from that project's
	// backups of the workload only, and the record's project label is that
	// id, whatever the request named the project by.
	project := SourceProject(source)
	if project == "" {
		project = in.Project
	}
	labels := maps.Clone(in.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[LabelWorkload] = in.Workload // never a user label's value
	if project != "" {
		labels[LabelProject] = project
	}
	if in.Policy != "" {
		labels[LabelPolicy] = in.Policy
	}
	prev, err := r.ListBackups(ctx, workloadFilter(in.Workload, project))
	if err != nil {
		return nil, fmt.Errorf("find bases: %w", err)
	}
	for i := range vms {
		if !repo.ValidName(vms[i].Name) {
			return nil, invalid("VM name %q cannot name a backup directory", vms[i].Name)
		}
		for j := range vms[i].Disks {
			d := &vms[i].Disks[j]
			if !repo.ValidName(d.Name) {
				return nil, invalid("disk name %q of %s cannot name a backup directory", d.Name, vms[i].Name)
			}
			d.Base, d.BaseCheckpoint = a.findBase(ctx, r, prev, vms[i].Name, d.Name)
		}
	}
	if _, err := r.JoinBackup(ctx, in.BackupID); err == nil {
		return &BeginResult{BackupID: in.BackupID, VMs: vms, ProjectID: project}, nil
	} else if !errors.Is(err, repo.ErrNoSession) {
		return nil, err
	}
	_, err = r.StartBackup(ctx, repo.BackupSpec{ID: in.BackupID, Labels: labels, Expires: in.Expires, Source: source})
	if err != nil {
		return nil, fmt.Errorf("open backup session: %w", err)
	}
	return &BeginResult{BackupID: in.BackupID, VMs: vms, ProjectID: project}, nil
}

// findBase returns the newest manifest of vm/disk in backups (oldest first)
// and its checkpoint token.
func (a *Activities) findBase(ctx context.Context, r *repo.Repository, backups []*repo.Backup, vm, disk string) (string, string) {
	for i := len(backups) - 1; i >= 0; i-- {
		for _, d := range backups[i].Disks {
			if d.VM != vm || d.Disk != disk {
				continue
			}
			m, err := r.LoadManifest(ctx, d.ID)
			if err != nil {
				a.logger(ctx).Warn("base manifest unreadable; full read", "manifest", d.ID, "err", err)
				return "", ""
			}
			if m.Checkpoint == nil {
				return d.ID, ""
			}
			return d.ID, m.Checkpoint.Name
		}
	}
	return "", ""
}

// Commit writes the backup record over the manifests the copies wrote.
func (a *Activities) Commit(ctx context.Context, in CommitInput) (*CommitResult, error) {
	r, err := a.repo(ctx, in.Repository)
	if err != nil {
		return nil, err
	}
	s, err := r.JoinBackup(ctx, in.BackupID)
	if err != nil {
		if b, lerr := r.LoadBackup(ctx, in.BackupID); lerr == nil {
			// An earlier attempt committed it (a build from before the
			// windows went into the record itself wrote them separately,
			// and may have stopped before that).
			return commitResult(a.recordFreezeWindows(ctx, r, b, in.FreezeWindows)), nil
		}
		return nil, fmt.Errorf("commit %s: %w", in.BackupID, err)
	}
	have := map[string]bool{}
	for _, m := range s.Disks() {
		have[m.ID] = true
	}
	for _, id := range in.Manifests {
		if !have[id] {
			return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("commit %s: manifest %s is missing", in.BackupID, id), ErrCorrupt, nil)
		}
	}
	if len(have) != len(in.Manifests) {
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("commit %s: %d manifests in the session, %d expected", in.BackupID, len(have), len(in.Manifests)), ErrCorrupt, nil)
	}
	s.SetConsistency(in.Consistency)
	s.SetFreezeWindows(in.FreezeWindows, in.WorkloadWindow)
	b, err := s.Commit(ctx)
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", in.BackupID, err)
	}
	// Counted here only, where the record is written: a retry that finds
	// it committed (above) does not count it again.
	a.cfg.Metrics.BackupCommitted(metrics.Backup{Workload: b.Labels["workload"], Repository: in.Repository, Consistency: b.Consistency,
		BytesRead: b.Stats.BytesRead, BytesNew: b.Stats.BytesNew, BytesReused: b.Stats.BytesReused, BytesStored: b.Stats.BytesStored,
		FreezeWindows: b.FreezeWindows, WorkloadWindow: b.WorkloadWindow})
	return commitResult(b), nil
}

// recordFreezeWindows adds the guests' freeze windows to a committed
// backup's record (informational: a failure is logged, the backup stands).
func (a *Activities) recordFreezeWindows(ctx context.Context, r *repo.Repository, b *repo.Backup, w map[string]time.Duration) *repo.Backup {
	if len(w) == 0 || len(b.FreezeWindows) > 0 {
		return b
	}
	nb, err := r.UpdateBackup(ctx, b.ID, func(b *repo.Backup) error { b.FreezeWindows = w; return nil })
	if err != nil {
		a.logger(ctx).Warn("the backup is committed; recording its freeze windows failed", "backup", b.ID, "err", err)
		return b
	}
	return nb
}

func commitResult(b *repo.Backup) *CommitResult {
	return &CommitResult{BackupID: b.ID, Disks: len(b.Disks), BytesRead: b.Stats.BytesRead, BytesNew: b.Stats.BytesNew, BytesStored: b.Stats.BytesStored}
}

// Abort drops the session of a backup that will not be committed.
func (a *Activities) Abort(ctx context.Context, in AbortInput) error {
	r, err := a.repo(ctx, in.Repository)
	if err != nil {
		return err
	}
	s, err := r.JoinBackup(ctx, in.BackupID)
	if errors.Is(err, repo.ErrNoSession) {
		return nil
	}
	if err != nil {
		return err
	}
	return s.Abort(ctx)
}

// Prune deletes the backups of one workload of one project that the
// retention does not keep: those labelled in.Labels whose RecordProject is
// in.Project, grouped by their labels with the project label read as
// RecordProject (so records from before the label held the id group with
// the newer ones). A request without ByProject (a run started before
// workloads were keyed by project) prunes nothing: by name alone it could
// reach another project's backups.
func (a *Activities) Prune(ctx context.Context, in PruneInput) (*PruneResult, error) {
	if !in.ByProject {
		return nil, invalid("prune %v: no project given (a backup started before workloads were keyed by project); nothing pruned", in.Labels)
	}
	if in.Labels[LabelWorkload] == "" {
		return nil, invalid("prune: no workload label given; nothing pruned")
	}
	r, err := a.repo(ctx, in.Repository)
	if err != nil {
		return nil, err
	}
	ret := repo.Retention{Last: in.Retention.Last, Hourly: in.Retention.Hourly, Daily: in.Retention.Daily,
		Weekly: in.Retention.Weekly, Monthly: in.Retention.Monthly, Yearly: in.Retention.Yearly}
	f := workloadFilter(in.Labels[LabelWorkload], in.Project)
	f.Labels = in.Labels
	list, err := r.ListBackups(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("prune workload %s of project %q: %w", in.Labels[LabelWorkload], in.Project, err)
	}
	dec := repo.DecideGrouped(list, ret, time.Now(), func(b *repo.Backup) map[string]string {
		l := maps.Clone(b.Labels)
		if p := RecordProject(b); p != "" {
			l[LabelProject] = p
		}
		return l
	})
	// A backup protected since the listing is kept.
	removed, err := r.ApplyDecisions(ctx, dec)
	out := &PruneResult{Removed: removed}
	if err != nil {
		return out, fmt.Errorf("prune workload %s of project %q: %w", in.Labels[LabelWorkload], in.Project, err)
	}
	return out, nil
}
