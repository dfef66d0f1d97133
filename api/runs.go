package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/workflows"
)

// A run's API id is its workflow id with every "/" as "~" (no part of a
// Raksha workflow id holds a "~": backup ids, workload names and the
// API's suffixes are repo.ValidName), so restore/B/S is restore~B~S.
func runAPIID(workflowID string) string { return strings.ReplaceAll(workflowID, "/", "~") }

// runWorkflowID is the workflow id of an API id, if it has the prefix
// ("restore/", "backup/").
func runWorkflowID(apiID, prefix string) (string, bool) {
	wid := strings.ReplaceAll(apiID, "~", "/")
	if !strings.HasPrefix(wid, prefix) || len(wid) > 512 {
		return "", false
	}
	for _, part := range strings.Split(wid, "/") {
		if !repo.ValidName(part) {
			return "", false
		}
	}
	return wid, true
}

// apiMemo is the memo the API puts on the workflows it starts.
type apiMemo struct {
	StartedBy       string `json:"started_by"`
	Repository      string `json:"repository"`
	BackupID        string `json:"backup_id,omitempty"`
	SourceProjectID string `json:"source_project_id,omitempty"`
}

const memoKey = "raksha_api"

// runInfo is what the API reads of a workflow execution.
type runInfo struct {
	WorkflowID string
	Status     string
	Running    bool
	Started    time.Time
	Closed     time.Time
	Project    string
	Operation  string
	Workload   string
	Memo       apiMemo
}

func keyword(sa *commonpb.SearchAttributes, name string) string {
	p := sa.GetIndexedFields()[name]
	if p == nil {
		return ""
	}
	var s string
	if converter.GetDefaultDataConverter().FromPayload(p, &s) != nil {
		return ""
	}
	return s
}

func infoOfExecution(e *workflowpb.WorkflowExecutionInfo) runInfo {
	ri := runInfo{WorkflowID: e.GetExecution().GetWorkflowId(),
		Status:  strings.TrimPrefix(enumspb.WorkflowExecutionStatus_name[int32(e.GetStatus())], "WORKFLOW_EXECUTION_STATUS_"),
		Running: e.GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING,
		Started: e.GetStartTime().AsTime(),
		Project: keyword(e.GetSearchAttributes(), "RakshaProject"), Operation: keyword(e.GetSearchAttributes(), "RakshaOperation"),
		Workload: keyword(e.GetSearchAttributes(), "RakshaWorkload")}
	if e.GetCloseTime() != nil {
		ri.Closed = e.GetCloseTime().AsTime()
	}
	if p := e.GetMemo().GetFields()[memoKey]; p != nil {
		_ = converter.GetDefaultDataConverter().FromPayload(p, &ri.Memo)
	}
	return ri
}

// describeRun reads a run of the operation that the caller may act on:
// 404 when there is none or it is in a project where the caller has no
// role, 403 when the policy refuses.
func (s *Server) describeRun(ctx context.Context, id *Identity, wid, op, action string, notFound *Error) (runInfo, error) {
	d, err := s.cfg.Temporal.DescribeWorkflowExecution(ctx, wid, "")
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		return runInfo{}, notFound
	}
	if err != nil {
		return runInfo{}, fmt.Errorf("describe workflow %s: %w", wid, err)
	}
	ri := infoOfExecution(d.GetWorkflowExecutionInfo())
	switch {
	case ri.Operation != op:
		return runInfo{}, notFound
	case ri.Project == "":
		// An operator's run without a project: an admin's only.
		if !s.policy.Allowed(RuleAdmin, id.Roles) {
			return runInfo{}, notFound
		}
		if !s.policy.Allowed(action, id.Roles) {
			return runInfo{}, forbidden(action)
		}
	default:
		if err := s.require(ctx, id, action, ri.Project, notFound); err != nil {
			return runInfo{}, err
		}
	}
	return ri, nil
}

// query asks a running workflow for its progress into v (bounded by 5 s:
// a run whose worker is away shows no progress rather than hanging).
func (s *Server) query(ctx context.Context, wid string, v any) bool {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := s.cfg.Temporal.QueryWorkflow(qctx, wid, "", workflows.ProgressQuery)
	if err != nil {
		s.log.Warn("progress query", "workflow_id", wid, "err", err)
		return false
	}
	return res.Get(v) == nil
}

// cancelRun asks Temporal to cancel a running workflow.
func (s *Server) cancelRun(ctx context.Context, ri runInfo, what string) error {
	if !ri.Running {
		return errorf(http.StatusConflict, "%s is not running (status %s).", what, ri.Status)
	}
	if err := s.cfg.Temporal.CancelWorkflow(ctx, ri.WorkflowID, ""); err != nil {
		return fmt.Errorf("cancel workflow %s: %w", ri.WorkflowID, err)
	}
	return nil
}

func randomSuffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b)
}

// projectIDRE is what the API accepts as a project id (Keystone's are 32
// hex digits; some deployments use other ids).
var projectIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// BackupRunView is a backup being made (or made): a WorkloadBackup run.
type BackupRunView struct {
	ID        string              `json:"id"`
	Workload  string              `json:"workload"`
	ProjectID string              `json:"project_id"`
	Status    string              `json:"status"`
	Started   time.Time           `json:"started_at"`
	Closed    *time.Time          `json:"closed_at,omitempty"`
	Progress  *workflows.Progress `json:"progress,omitempty"`
}

func backupRunView(ri runInfo) BackupRunView {
	v := BackupRunView{ID: runAPIID(ri.WorkflowID), Workload: ri.Workload, ProjectID: ri.Project, Status: ri.Status, Started: ri.Started}
	if !ri.Closed.IsZero() {
		v.Closed = &ri.Closed
	}
	return v
}

type backupStartBody struct {
	Backup *struct {
		Workload    string `json:"workload"`
		Repository  string `json:"repository"`
		Consistency string `json:"consistency"`
		ExpireAfter string `json:"expire_after"`
	} `json:"backup"`
}

// startBackup is POST /v1/backups: a WorkloadBackup of the servers of the
// token's project whose metadata raksha.workload is the workload. A
// tenant gives no hooks, selector, labels or project: those are the
// operator's.
func (s *Server) startBackup(w http.ResponseWriter, r *http.Request, id *Identity) error {
	var body backupStartBody
	if err := decodeBody(r, &body); err != nil {
		return err
	}
	b := body.Backup
	if b == nil {
		return errorf(http.StatusBadRequest, "Malformed request body: no \"backup\" object.")
	}
	if err := s.require(r.Context(), id, ActionBackupStart, id.ProjectID, nil); err != nil {
		return err
	}
	if !repo.ValidName(b.Workload) {
		return errorf(http.StatusBadRequest, "Invalid workload %q: want 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit.", b.Workload)
	}
	if b.Consistency == "" {
		b.Consistency = "app"
	}
	if b.Consistency != "app" && b.Consistency != "crash" {
		return errorf(http.StatusBadRequest, "Invalid consistency %q: want app or crash.", b.Consistency)
	}
	var expire time.Duration
	if b.ExpireAfter != "" {
		d, err := time.ParseDuration(b.ExpireAfter)
		if err != nil || d <= 0 {
			return errorf(http.StatusBadRequest, "Invalid expire_after %q: want a positive duration such as 720h.", b.ExpireAfter)
		}
		expire = d
	}
	repoID, err := s.repoID(b.Repository)
	if err != nil {
		return err
	}
	rp, err := s.cfg.Repos.Open(r.Context(), repoID)
	if errors.Is(err, ErrUnknownRepository) {
		return errorf(http.StatusNotFound, "Repository %s could not be found.", repoID)
	}
	// A repository the API cannot open fails the start only when a quota
	// needs its records (the workers open it on their own).
	if err := s.checkQuota(r.Context(), id.ProjectID, repoID, rp, err); err != nil {
		return err
	}
	req := workflows.BackupRequest{Workload: b.Workload, Project: id.ProjectID, Repository: repoID,
		Selector: activities.Selector{Workload: b.Workload}, Consistency: b.Consistency, ExpireAfter: expire}
	wid := workflows.BackupWorkflowID(id.ProjectID, b.Workload)
	run, err := s.cfg.Temporal.ExecuteWorkflow(r.Context(), client.StartWorkflowOptions{
		ID: wid, TaskQueue: activities.ControlQueue,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
		WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
		// Without it the SDK answers a running backup's run as if it had
		// started this one.
		WorkflowExecutionErrorWhenAlreadyStarted: true,
		TypedSearchAttributes: temporal.NewSearchAttributes(workflows.SAWorkload.ValueSet(b.Workload),
			workflows.SAOperation.ValueSet("backup"), workflows.SAProject.ValueSet(id.ProjectID)),
		Memo: map[string]any{memoKey: apiMemo{StartedBy: id.UserID, Repository: repoID}},
	}, workflows.WorkloadBackup, req)
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	if errors.As(err, &started) {
		return errorf(http.StatusConflict, "A backup of workload %s is already running.", b.Workload)
	}
	if err != nil {
		return fmt.Errorf("start backup of workload %s: %w", b.Workload, err)
	}
	s.log.Info("backup started", "workflow_id", run.GetID(), "run_id", run.GetRunID(), "user_id", id.UserID, "project_id", id.ProjectID)
	writeJSON(w, http.StatusAccepted, map[string]any{"backup_run": BackupRunView{ID: runAPIID(wid), Workload: b.Workload,
		ProjectID: id.ProjectID, Status: "RUNNING", Started: time.Now().UTC()}})
	return nil
}

// showBackupRun is GET /v1/backup-runs/{id}, with the run's progress
// while it runs.
func (s *Server) showBackupRun(w http.ResponseWriter, r *http.Request, id *Identity) error {
	notFound := errorf(http.StatusNotFound, "Backup run %s could not be found.", r.PathValue("id"))
	wid, ok := runWorkflowID(r.PathValue("id"), "backup/")
	if !ok {
		return notFound
	}
	ri, err := s.describeRun(r.Context(), id, wid, "backup", ActionBackupShow, notFound)
	if err != nil {
		return err
	}
	v := backupRunView(ri)
	if ri.Running {
		var p workflows.Progress
		if s.query(r.Context(), wid, &p) {
			v.Progress = &p
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"backup_run": v})
	return nil
}

// cancelBackupRun is POST /v1/backup-runs/{id}/cancel: the workflow is
// cancelled (guests are thawed, nothing is committed).
func (s *Server) cancelBackupRun(w http.ResponseWriter, r *http.Request, id *Identity) error {
	notFound := errorf(http.StatusNotFound, "Backup run %s could not be found.", r.PathValue("id"))
	wid, ok := runWorkflowID(r.PathValue("id"), "backup/")
	if !ok {
		return notFound
	}
	ri, err := s.describeRun(r.Context(), id, wid, "backup", ActionBackupCancel, notFound)
	if err != nil {
		return err
	}
	if err := s.cancelRun(r.Context(), ri, "Backup run "+r.PathValue("id")); err != nil {
		return err
	}
	v := backupRunView(ri)
	v.Status = "CANCEL_REQUESTED"
	writeJSON(w, http.StatusAccepted, map[string]any{"backup_run": v})
	return nil
}
