package api

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/workflows"
)

// RestoreView is a restore: a Restore workflow the API started.
type RestoreView struct {
	ID              string                     `json:"id"`
	BackupID        string                     `json:"backup_id"`
	Repository      string                     `json:"repository"`
	ProjectID       string                     `json:"project_id"`
	SourceProjectID string                     `json:"source_project_id"`
	Status          string                     `json:"status"`
	Started         time.Time                  `json:"started_at"`
	Closed          *time.Time                 `json:"closed_at,omitempty"`
	Progress        *workflows.RestoreProgress `json:"progress,omitempty"`
}

func restoreView(ri runInfo) RestoreView {
	v := RestoreView{ID: runAPIID(ri.WorkflowID), BackupID: ri.Memo.BackupID, Repository: ri.Memo.Repository,
		ProjectID: ri.Project, SourceProjectID: ri.Memo.SourceProjectID, Status: ri.Status, Started: ri.Started}
	if !ri.Closed.IsZero() {
		v.Closed = &ri.Closed
	}
	return v
}

// restoreStartBody holds the CLI's restore options that are safe for a
// tenant; hooks and health checks are not among them (an unknown field
// is refused).
type restoreStartBody struct {
	Restore *struct {
		BackupID          string            `json:"backup_id"`
		Repository        string            `json:"repository"`
		ProjectID         string            `json:"project_id"`
		VMs               []string          `json:"vms"`
		Volumes           []string          `json:"volumes"`
		NamePrefix        string            `json:"name_prefix"`
		Networks          map[string]string `json:"networks"`
		Flavors           map[string]string `json:"flavors"`
		KeepFixedIPs      bool              `json:"keep_fixed_ips"`
		InPlace           bool              `json:"in_place"`
		NoWorkloadLabel   bool              `json:"no_workload_label"`
		MaxParallelWrites int               `json:"max_parallel_writes"`
	} `json:"restore"`
}

// startRestore is POST /v1/restores: a Restore of a backup into the
// token's project (or project_id). It needs restore:start on the backup's
// project and on the target. An in-place restore goes back into the
// backup's own servers: it takes no project_id, and only a token scoped
// to the backup's project (or an admin) may ask for it.
func (s *Server) startRestore(w http.ResponseWriter, r *http.Request, id *Identity) error {
	var body restoreStartBody
	if err := decodeBody(r, &body); err != nil {
		return err
	}
	b := body.Restore
	if b == nil {
		return errorf(http.StatusBadRequest, "Malformed request body: no \"restore\" object.")
	}
	if b.BackupID == "" {
		return errorf(http.StatusBadRequest, "backup_id is required.")
	}
	if b.MaxParallelWrites < 0 || b.MaxParallelWrites > 32 {
		return errorf(http.StatusBadRequest, "Invalid max_parallel_writes %d: want 0 (default) to 32.", b.MaxParallelWrites)
	}
	repoID, bk, err := s.loadBackup(r, id, b.Repository, b.BackupID, ActionRestoreStart)
	if err != nil {
		return err
	}
	source := BackupProject(bk)
	target := b.ProjectID
	if b.InPlace {
		if target != "" && target != source {
			return errorf(http.StatusBadRequest, "An in-place restore goes back into the backup's own servers: it takes no project_id.")
		}
		if len(b.Volumes) > 0 || b.NamePrefix != "" {
			return errorf(http.StatusBadRequest, "An in-place restore rolls whole servers back: it takes no volumes or name_prefix.")
		}
		if source != id.ProjectID && !s.policy.Allowed(RuleAdmin, id.Roles) {
			return errorf(http.StatusForbidden, "An in-place restore needs a token scoped to the backup's project.")
		}
		target = ""
	} else {
		if target == "" {
			target = id.ProjectID
		}
		if !projectIDRE.MatchString(target) {
			return errorf(http.StatusBadRequest, "Invalid project_id %q.", target)
		}
		if target != source {
			if err := s.require(r.Context(), id, ActionRestoreStart, target, nil); err != nil {
				return err
			}
		}
	}
	req := workflows.RestoreRequest{Repository: repoID, BackupID: bk.ID, VMs: b.VMs, Volumes: b.Volumes, Project: target,
		NamePrefix: b.NamePrefix, Networks: b.Networks, Flavors: b.Flavors, KeepFixedIPs: b.KeepFixedIPs, InPlace: b.InPlace,
		MaxParallelWrites: b.MaxParallelWrites}
	if b.NoWorkloadLabel {
		req.Metadata = map[string]string{cloud.WorkloadKey: ""}
	}
	owner := target
	if owner == "" {
		owner = source
	}
	wid := workflows.RestoreWorkflowID(bk.ID, randomSuffix())
	memo := apiMemo{StartedBy: id.UserID, Repository: repoID, BackupID: bk.ID, SourceProjectID: source}
	// A delete of the backup waits for this start and then sees the run.
	defer s.backupLocks.lock(repoID + "/" + bk.ID)()
	_, err = s.cfg.Temporal.ExecuteWorkflow(r.Context(), client.StartWorkflowOptions{ID: wid, TaskQueue: activities.ControlQueue,
		WorkflowIDConflictPolicy:                 enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
		WorkflowIDReusePolicy:                    enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		WorkflowExecutionErrorWhenAlreadyStarted: true,
		TypedSearchAttributes: temporal.NewSearchAttributes(workflows.SAOperation.ValueSet("restore"),
			workflows.SAProject.ValueSet(owner), workflows.SAWorkload.ValueSet(bk.Labels["workload"])),
		Memo: map[string]any{memoKey: memo},
	}, workflows.Restore, req)
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	if errors.As(err, &started) {
		return errorf(http.StatusConflict, "Restore %s exists already.", runAPIID(wid))
	}
	if err != nil {
		return fmt.Errorf("start restore of backup %s: %w", bk.ID, err)
	}
	s.readers.add(repoID+"/"+bk.ID, wid, time.Now())
	s.log.Info("restore started", "workflow_id", wid, "backup_id", bk.ID, "user_id", id.UserID, "project_id", owner, "source_project_id", source)
	writeJSON(w, http.StatusAccepted, map[string]any{"restore": restoreView(runInfo{WorkflowID: wid, Status: "RUNNING",
		Running: true, Started: time.Now().UTC(), Project: owner, Memo: memo})})
	return nil
}

// listRestores is GET /v1/restores: the restores into the token's project
// (or project_id), newest first, from Temporal's visibility store; marker
// is the opaque token of the next page.
func (s *Server) listRestores(w http.ResponseWriter, r *http.Request, id *Identity) error {
	return s.listRuns(restoreKind(), w, r, id)
}

// showRestore is GET /v1/restores/{id}, with the workflow's progress
// (its progress query) while it runs.
func (s *Server) showRestore(w http.ResponseWriter, r *http.Request, id *Identity) error {
	return s.showRun(restoreKind(), w, r, id)
}

// cancelRestore is POST /v1/restores/{id}/cancel: the workflow is
// cancelled and deletes what it made.
func (s *Server) cancelRestore(w http.ResponseWriter, r *http.Request, id *Identity) error {
	return s.cancelRunRequest(restoreKind(), w, r, id)
}
