package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/workflows"
)

// CloneView is a clone: a Clone workflow the API started (a restore into
// a project, every server and volume labelled raksha.clone=NAME).
type CloneView struct {
	RestoreView
	Name string `json:"name"`
}

func cloneView(ri runInfo) CloneView {
	return CloneView{RestoreView: restoreView(ri), Name: strings.TrimPrefix(ri.WorkflowID, "clone/")}
}

// cloneStartBody holds the clone options that are safe for a tenant: no
// post-restore hooks or health check (an unknown field is refused).
type cloneStartBody struct {
	Clone *struct {
		Name              string            `json:"name"`
		BackupID          string            `json:"backup_id"`
		Repository        string            `json:"repository"`
		ProjectID         string            `json:"project_id"`
		VMs               []string          `json:"vms"`
		NamePrefix        string            `json:"name_prefix"`
		Networks          map[string]string `json:"networks"`
		Flavors           map[string]string `json:"flavors"`
		KeepFixedIPs      bool              `json:"keep_fixed_ips"`
		MaxParallelWrites int               `json:"max_parallel_writes"`
	} `json:"clone"`
}

// startClone is POST /v1/clones: a Clone of a backup into project_id (the
// token's by default). It needs clone:start on the backup's project and on
// the target.
func (s *Server) startClone(w http.ResponseWriter, r *http.Request, id *Identity) error {
	var body cloneStartBody
	if err := decodeBody(r, &body); err != nil {
		return err
	}
	c := body.Clone
	if c == nil {
		return errorf(http.StatusBadRequest, "Malformed request body: no \"clone\" object.")
	}
	if c.BackupID == "" {
		return errorf(http.StatusBadRequest, "backup_id is required.")
	}
	if c.Name == "" {
		c.Name = "clone-" + randomSuffix()
	}
	if !repo.ValidName(c.Name) {
		return errorf(http.StatusBadRequest, "Invalid clone name %q: want 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit.", c.Name)
	}
	if c.MaxParallelWrites < 0 || c.MaxParallelWrites > 32 {
		return errorf(http.StatusBadRequest, "Invalid max_parallel_writes %d: want 0 (default) to 32.", c.MaxParallelWrites)
	}
	target := c.ProjectID
	if target == "" {
		target = id.ProjectID
	}
	if !projectIDRE.MatchString(target) {
		return errorf(http.StatusBadRequest, "Invalid project_id %q.", target)
	}
	repoID, bk, err := s.loadBackup(r, id, c.Repository, c.BackupID, ActionCloneStart)
	if err != nil {
		return err
	}
	source := BackupProject(bk)
	if target != source {
		if err := s.require(r.Context(), id, ActionCloneStart, target, nil); err != nil {
			return err
		}
	}
	req := workflows.CloneRequest{Name: c.Name, RestoreRequest: workflows.RestoreRequest{Repository: repoID, BackupID: bk.ID,
		VMs: c.VMs, Project: target, NamePrefix: c.NamePrefix, Networks: c.Networks, Flavors: c.Flavors,
		KeepFixedIPs: c.KeepFixedIPs, MaxParallelWrites: c.MaxParallelWrites}}
	wid := workflows.CloneWorkflowID(c.Name)
	memo := apiMemo{StartedBy: id.UserID, Repository: repoID, BackupID: bk.ID, SourceProjectID: source}
	// A delete of the backup waits for this start and then sees the run.
	defer s.backupLocks.lock(repoID + "/" + bk.ID)()
	_, err = s.cfg.Temporal.ExecuteWorkflow(r.Context(), client.StartWorkflowOptions{ID: wid, TaskQueue: activities.ControlQueue,
		WorkflowIDConflictPolicy:                 enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
		WorkflowIDReusePolicy:                    enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		WorkflowExecutionErrorWhenAlreadyStarted: true,
		TypedSearchAttributes: temporal.NewSearchAttributes(workflows.SAOperation.ValueSet("clone"),
			workflows.SAProject.ValueSet(target), workflows.SAWorkload.ValueSet(bk.Labels["workload"])),
		Memo: map[string]any{memoKey: memo},
	}, workflows.Clone, req)
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	if errors.As(err, &started) {
		return errorf(http.StatusConflict, "A clone named %s exists already.", c.Name)
	}
	if err != nil {
		return fmt.Errorf("start clone %s of backup %s: %w", c.Name, bk.ID, err)
	}
	s.readers.add(repoID+"/"+bk.ID, wid, time.Now())
	s.log.Info("clone started", "workflow_id", wid, "backup_id", bk.ID, "user_id", id.UserID, "project_id", target, "source_project_id", source)
	writeJSON(w, http.StatusAccepted, map[string]any{"clone": cloneView(runInfo{WorkflowID: wid, Status: "RUNNING",
		Running: true, Started: time.Now().UTC(), Project: target, Memo: memo})})
	return nil
}

// listClones is GET /v1/clones: the clones into the token's project (or
// project_id), newest first; marker is the opaque token of the next page.
func (s *Server) listClones(w http.ResponseWriter, r *http.Request, id *Identity) error {
	return s.listRuns(cloneKind(), w, r, id)
}

// showClone is GET /v1/clones/{id}, with progress while it runs.
func (s *Server) showClone(w http.ResponseWriter, r *http.Request, id *Identity) error {
	return s.showRun(cloneKind(), w, r, id)
}

// cancelClone is POST /v1/clones/{id}/cancel: a clone being made is
// cancelled and deletes what it made.
func (s *Server) cancelClone(w http.ResponseWriter, r *http.Request, id *Identity) error {
	return s.cancelRunRequest(cloneKind(), w, r, id)
}

// CloneDeleteView is a clone's tear-down: a CloneDelete workflow.
type CloneDeleteView struct {
	ID        string `json:"id"`
	Clone     string `json:"clone"`
	ProjectID string `json:"project_id"`
}

// deleteClone is DELETE /v1/clones/{id}: a CloneDelete of every server and
// volume labelled with the clone's name in its project. A clone still
// being made is refused (cancel it: it deletes what it made).
func (s *Server) deleteClone(w http.ResponseWriter, r *http.Request, id *Identity) error {
	notFound := errorf(http.StatusNotFound, "Clone %s could not be found.", r.PathValue("id"))
	wid, ok := runWorkflowID(r.PathValue("id"), "clone/")
	if !ok {
		return notFound
	}
	ri, err := s.describeRun(r.Context(), id, wid, "clone", ActionCloneDelete, notFound)
	if err != nil {
		return err
	}
	if ri.Running {
		return errorf(http.StatusConflict, "Clone %s is still being made.", r.PathValue("id"))
	}
	name := strings.TrimPrefix(wid, "clone/")
	did := "clone-delete/" + name + "/" + randomSuffix()
	_, err = s.cfg.Temporal.ExecuteWorkflow(r.Context(), client.StartWorkflowOptions{ID: did, TaskQueue: activities.ControlQueue,
		WorkflowIDConflictPolicy:                 enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
		WorkflowExecutionErrorWhenAlreadyStarted: true,
		TypedSearchAttributes: temporal.NewSearchAttributes(workflows.SAOperation.ValueSet("clone-delete"),
			workflows.SAProject.ValueSet(ri.Project)),
		Memo: map[string]any{memoKey: apiMemo{StartedBy: id.UserID, Repository: ri.Memo.Repository, BackupID: ri.Memo.BackupID}},
	}, workflows.CloneDelete, workflows.CloneDeleteRequest{Name: name, Project: ri.Project})
	if err != nil {
		return fmt.Errorf("start the deletion of clone %s: %w", name, err)
	}
	s.log.Info("clone delete started", "workflow_id", did, "user_id", id.UserID, "project_id", ri.Project)
	writeJSON(w, http.StatusAccepted, map[string]any{"clone_delete": CloneDeleteView{ID: runAPIID(did), Clone: runAPIID(wid), ProjectID: ri.Project}})
	return nil
}
