package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"go.temporal.io/api/workflowservice/v1"

	"github.com/raksha-backup/raksha/internal/repo"
)

// Limits are a project's quota. A nil field takes the default's; a
// negative one (or nil in the default) is no limit.
type Limits struct {
	// Backups bounds the project's backups in a repository: its committed
	// backups plus its backup runs still running.
	Backups *int64 `yaml:"backups" json:"backups,omitempty"`
	// Bytes bounds the bytes the project's backups stored in a repository:
	// the sum of their bytes_stored (what each added, compressed and
	// encrypted, when it was made).
	Bytes *int64 `yaml:"bytes" json:"bytes,omitempty"`
}

// Quotas are the admin's limits per project (raksha-api's configuration),
// enforced when a backup starts. The zero value limits nothing.
type Quotas struct {
	// Default applies to every project not in Projects, and to the fields
	// a project's entry leaves out.
	Default Limits `yaml:"default"`
	// Projects are limits by project id.
	Projects map[string]Limits `yaml:"projects"`
}

// Validate refuses a project key that is not a project id.
func (q *Quotas) Validate() error {
	for p := range q.Projects {
		if !projectIDRE.MatchString(p) {
			return fmt.Errorf("quotas: %q is not a project id", p)
		}
	}
	return nil
}

// limit is one quota's limit: -1 when there is none.
func limitOf(v, def *int64) int64 {
	switch {
	case v != nil && *v >= 0:
		return *v
	case v != nil:
		return -1
	case def != nil && *def >= 0:
		return *def
	}
	return -1
}

// For returns the project's limits (-1: no limit) of backups and bytes.
func (q *Quotas) For(project string) (backups, bytes int64) {
	if q == nil {
		return -1, -1
	}
	l := q.Projects[project]
	return limitOf(l.Backups, q.Default.Backups), limitOf(l.Bytes, q.Default.Bytes)
}

// QuotaUsage is one quota of a project: its limit (-1: none) and what the
// project uses.
type QuotaUsage struct {
	Limit int64 `json:"limit"`
	InUse int64 `json:"in_use"`
}

// QuotaView is a project's quotas in one repository.
type QuotaView struct {
	ProjectID  string     `json:"project_id"`
	Repository string     `json:"repository"`
	Backups    QuotaUsage `json:"backups"`
	Bytes      QuotaUsage `json:"bytes"`
}

// usage counts a project's backups and stored bytes in a repository, and
// its backup runs still running (Temporal's visibility; a run is counted
// until its backup is committed and the run closed).
func (s *Server) usage(ctx context.Context, project, repoID string, rp *repo.Repository) (QuotaView, error) {
	v := QuotaView{ProjectID: project, Repository: repoID}
	v.Backups.Limit, v.Bytes.Limit = s.cfg.Quotas.For(project)
	all, err := rp.ListBackups(ctx, repo.Filter{})
	if err != nil {
		return v, fmt.Errorf("usage of project %s in repository %s: %w", project, repoID, err)
	}
	for _, b := range all {
		if BackupProject(b) == project {
			v.Backups.InUse++
			v.Bytes.InUse += b.Stats.BytesStored
		}
	}
	n, err := s.cfg.Temporal.CountWorkflow(ctx, &workflowservice.CountWorkflowExecutionsRequest{Query: countRunningBackups(project)})
	if err != nil {
		return v, fmt.Errorf("usage of project %s: count its running backups: %w", project, err)
	}
	v.Backups.InUse += n.GetCount()
	return v, nil
}

// checkQuota refuses a backup of the project when it would exceed a quota:
// 413 naming the quota, the usage and the limit (as Cinder's
// VolumeLimitExceeded does).
func (s *Server) checkQuota(ctx context.Context, project, repoID string, rp *repo.Repository, openErr error) error {
	if b, by := s.cfg.Quotas.For(project); b < 0 && by < 0 {
		return nil
	}
	if openErr != nil {
		return fmt.Errorf("quota of project %s: open repository %s: %w", project, repoID, openErr)
	}
	v, err := s.usage(ctx, project, repoID, rp)
	if err != nil {
		return err
	}
	if v.Backups.Limit >= 0 && v.Backups.InUse+1 > v.Backups.Limit {
		return errorf(http.StatusRequestEntityTooLarge, "Quota exceeded for backups: project %s has %d backups in repository %s (running ones included), the limit is %d.",
			project, v.Backups.InUse, repoID, v.Backups.Limit)
	}
	if v.Bytes.Limit >= 0 && v.Bytes.InUse >= v.Bytes.Limit {
		return errorf(http.StatusRequestEntityTooLarge, "Quota exceeded for bytes: project %s stores %d bytes in repository %s, the limit is %d.",
			project, v.Bytes.InUse, repoID, v.Bytes.Limit)
	}
	return nil
}

// showQuotas is GET /v1/quotas: the project's quotas and usage in a
// repository (the token's project, or project_id with quota:show there).
func (s *Server) showQuotas(w http.ResponseWriter, r *http.Request, id *Identity) error {
	project := id.ProjectID
	if p := r.URL.Query().Get("project_id"); p != "" {
		if !projectIDRE.MatchString(p) {
			return errorf(http.StatusBadRequest, "Invalid project_id %q.", p)
		}
		project = p
	}
	if err := s.require(r.Context(), id, ActionQuotaShow, project, nil); err != nil {
		return err
	}
	repoID, rp, err := s.openRepo(r, r.URL.Query().Get("repository"))
	if err != nil {
		return err
	}
	v, err := s.usage(r.Context(), project, repoID, rp)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"quota": v})
	return nil
}

// countRunningBackups is the visibility query of a project's running
// backup runs (project ids are checked by projectIDRE or come from
// Keystone; quotes are doubled all the same).
func countRunningBackups(project string) string {
	return fmt.Sprintf("RakshaOperation = 'backup' AND RakshaProject = '%s' AND ExecutionStatus = 'Running'", strings.ReplaceAll(project, "'", "''"))
}
