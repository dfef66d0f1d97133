package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"

	"github.com/raksha-backup/raksha/internal/repo"
)

// System labels: the labels WorkloadBackup sets on every backup record. Prune,
// base selection and the catalog rely on them, so a request's own labels
// cannot set them (CheckUserLabels).
const (
	LabelWorkload = "workload"
	LabelProject  = "project"
	LabelPolicy   = "policy"
)

// SystemLabels lists the system labels, sorted.
var SystemLabels = []string{LabelPolicy, LabelProject, LabelWorkload}

// CheckUserLabels refuses user labels that would set a system label, naming
// the first such label (in sorted order) and what sets it.
func CheckUserLabels(labels map[string]string) error {
	var bad []string
	for k := range labels {
		if slices.Contains(SystemLabels, k) {
			bad = append(bad, k)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	sort.Strings(bad)
	return fmt.Errorf("label %q is a system label (set by Raksha: %v); a request's labels cannot set it", bad[0], SystemLabels)
}

// SourceProject is the project id a workload backup's captured metadata
// (cloud.Workload's project_id: the project discovery was scoped to)
// names, or "" when the source names none (not a workload backup, or no
// such field).
func SourceProject(source json.RawMessage) string {
	if len(source) == 0 {
		return ""
	}
	var w struct {
		ProjectID string `json:"project_id"`
	}
	if json.Unmarshal(source, &w) != nil {
		return ""
	}
	return w.ProjectID
}

// RecordProject is the project a backup record belongs to: the project id
// its captured metadata names, which discovery wrote and no request can
// set; else (a record without one) its project label; else "" (unknown).
// A record of an unknown project belongs to no project's workload: it is
// neither pruned by a project's retention nor used as a base (only a
// discoverer that captures no project, as tests' static ones, sees it).
func RecordProject(b *repo.Backup) string {
	if p := SourceProject(b.Source); p != "" {
		return p
	}
	return b.Labels[LabelProject]
}

// workloadFilter selects the backups of workload in project (by
// RecordProject): the key of base selection and prune.
func workloadFilter(workload, project string) repo.Filter {
	return repo.Filter{Labels: map[string]string{LabelWorkload: workload},
		Match: func(b *repo.Backup) bool { return RecordProject(b) == project }}
}

// ProjectResolver is a Discoverer that can tell the id of the project a
// request names (by name or id).
type ProjectResolver interface {
	// ProjectID returns the id of project (a name or an id; "" is the
	// cloud user's own project).
	ProjectID(ctx context.Context, project string) (string, error)
}

// ResolveProjectInput names a workload's project as a request gave it.
type ResolveProjectInput struct {
	Project string `json:"project,omitempty"`
}

// ResolveProject returns the id of the project a request names, through
// the cloud (Keystone), so that a workload's lock is the same whether its
// project was named by name or by id. A discoverer that cannot resolve
// projects (tests' static ones) gives the project back as named.
func (a *Activities) ResolveProject(ctx context.Context, in ResolveProjectInput) (string, error) {
	r, ok := a.cfg.Discoverer.(ProjectResolver)
	if !ok {
		return in.Project, nil
	}
	id, err := r.ProjectID(ctx, in.Project)
	if err != nil {
		return "", fmt.Errorf("resolve project %q: %w", in.Project, err)
	}
	return id, nil
}
