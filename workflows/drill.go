package workflows

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/repo"
)

// DrillWorkflowID is the fixed workflow id of a workload's restore drill:
// one drill of a workload at a time, scheduled or manual.
func DrillWorkflowID(workload string) string { return "drill/" + workload }

// DefaultDrillTimeout bounds a drill whose request gives no timeout: the
// clone is cancelled (and so deleted) when it has not passed by then.
const DefaultDrillTimeout = 2 * time.Hour

// DrillOutputTail is how much of the end of a health check's output a
// drill keeps (bytes, on a UTF-8 boundary).
const DrillOutputTail = 2048

// ErrDrillFailed is the failure type of a drill whose clone did not come up
// healthy; the message names the guest and the check's output tail, the
// details are the drill's record.
const ErrDrillFailed = "DrillFailed"

// DrillMetric is the counter of finished drills (tags result: pass|fail,
// and workload), emitted through the Temporal SDK's metrics handler of the
// worker that runs the drill.
const DrillMetric = "raksha_drills"

// DrillRequest is the input of RestoreDrill.
type DrillRequest struct {
	// Workload is the workload whose newest backup is drilled; Project,
	// when set, keeps only its backups captured in that project.
	Workload string `json:"workload"`
	Project  string `json:"project,omitempty"`
	// Policy is the drill policy that started the run (if any).
	Policy     string `json:"policy,omitempty"`
	Repository string `json:"repository"`
	// DrillProject is where the clone goes (name or id).
	DrillProject string `json:"drill_project"`
	// VMs selects servers of the backup (empty: all of them).
	VMs []string `json:"vms,omitempty"`
	// Networks and Flavors map captured names or ids to those of the drill
	// project.
	Networks map[string]string `json:"networks,omitempty"`
	Flavors  map[string]string `json:"flavors,omitempty"`
	// PostHooks run in every guest of the clone before the health check.
	PostHooks []activities.Hook `json:"post_hooks,omitempty"`
	// HealthCheck runs in every guest of the clone; exit 0 is healthy.
	HealthCheck *activities.Hook `json:"health_check"`
	// Timeout bounds the clone up to its health check passing (0:
	// DefaultDrillTimeout).
	Timeout time.Duration `json:"timeout,omitempty"`
	// Operator marks a drill of the operator's (a drill policy; see
	// RestoreRequest.Operator): the clone runs its hooks and health check
	// only then.
	Operator bool `json:"operator,omitempty"`
}

// DrillProgress is what the "progress" query of RestoreDrill returns.
type DrillProgress struct {
	Phase    string `json:"phase"`
	BackupID string `json:"backup_id,omitempty"`
	Clone    string `json:"clone,omitempty"`
}

func drillValidate(req DrillRequest) error {
	switch {
	case req.Workload == "":
		return errors.New("drill: no workload")
	case req.Repository == "":
		return errors.New("drill: no repository")
	case req.DrillProject == "":
		return errors.New("drill: no drill project to clone into")
	case req.HealthCheck == nil || req.HealthCheck.Path == "":
		return errors.New("drill: no health check")
	case req.Timeout < 0:
		return errors.New("drill: negative timeout")
	}
	return nil
}

// RestoreDrill proves that the newest backup of a workload restores: it
// clones the backup into the drill project (a Clone child workflow, name
// drill-<workload>-<run>), where every guest boots on its restored disks and
// runs the post-hooks and the health check; then, whatever happened (pass,
// failure, timeout, cancellation: a disconnected context), it tears the
// clone down with CloneDelete, records the drill beside the backup in the
// repository (repo.Drill: pass or fail, time to ready, each guest's check
// and output tail, what teardown left) and sets the search attributes
// RakshaDrill (pass|fail), RakshaBackup and RakshaWorkload, and counts it
// in DrillMetric by result. A failed drill
// fails the workflow with type DrillFailed naming the guest and the check's
// output tail, after the teardown and the record; a teardown that left
// something fails it with type RestoreLeftovers. The backup itself is
// never changed.
func RestoreDrill(ctx workflow.Context, req DrillRequest) (*repo.Drill, error) {
	if err := drillValidate(req); err != nil {
		return nil, temporal.NewNonRetryableApplicationError(err.Error(), activities.ErrInvalid, nil)
	}
	info := workflow.GetInfo(ctx)
	start := workflow.Now(ctx)
	prog := &DrillProgress{Phase: "finding the newest backup"}
	if err := workflow.SetQueryHandler(ctx, ProgressQuery, func() (*DrillProgress, error) { return prog, nil }); err != nil {
		return nil, err
	}
	_ = workflow.UpsertTypedSearchAttributes(ctx, SAOperation.ValueSet("drill"), SAWorkload.ValueSet(req.Workload),
		SAProject.ValueSet(req.DrillProject))

	var nb activities.NewestBackup
	if err := workflow.ExecuteActivity(cloudOpts(ctx, 5*time.Minute, 5), a.FindNewestBackup, activities.NewestBackupInput{
		Repository: req.Repository, Workload: req.Workload, Project: req.Project}).Get(ctx, &nb); err != nil {
		_ = workflow.UpsertTypedSearchAttributes(ctx, SADrill.ValueSet(repo.DrillFail))
		return nil, fmt.Errorf("drill of workload %s: %w", req.Workload, err)
	}
	// The drill's id and the clone's name are fixed once, so that a reset
	// run (another run id) replays the same child.
	var ids struct{ Drill, Clone string }
	if err := workflow.SideEffect(ctx, func(workflow.Context) any {
		short := shortID(info.WorkflowExecution.RunID)
		return struct{ Drill, Clone string }{start.UTC().Format("20060102-150405") + "-" + short, "drill-" + req.Workload + "-" + short}
	}).Get(&ids); err != nil {
		return nil, err
	}
	clone := ids.Clone
	prog.BackupID, prog.Clone = nb.BackupID, clone
	_ = workflow.UpsertTypedSearchAttributes(ctx, SABackup.ValueSet(nb.BackupID))
	rec := repo.Drill{ID: ids.Drill, Backup: nb.BackupID, Workload: req.Workload,
		Policy: req.Policy, Project: req.DrillProject, Clone: clone, Workflow: info.WorkflowExecution.ID,
		RunID: info.WorkflowExecution.RunID, Started: start.UTC()}

	// The clone, bounded by the timeout: past it the clone is cancelled,
	// which deletes what it made.
	prog.Phase = "cloning"
	timeout := req.Timeout
	if timeout == 0 {
		timeout = DefaultDrillTimeout
	}
	cctx, cancelClone := workflow.WithCancel(ctx)
	cctx = workflow.WithChildOptions(cctx, workflow.ChildWorkflowOptions{
		WorkflowID: CloneWorkflowID(clone), TaskQueue: activities.ControlQueue, WaitForCancellation: true,
		ParentClosePolicy: enumspb.PARENT_CLOSE_POLICY_REQUEST_CANCEL,
		TypedSearchAttributes: temporal.NewSearchAttributes(SAOperation.ValueSet("clone"), SAWorkload.ValueSet(req.Workload),
			SABackup.ValueSet(nb.BackupID)),
	})
	cloneStart := workflow.Now(ctx)
	f := workflow.ExecuteChildWorkflow(cctx, Clone, CloneRequest{Name: clone, RestoreRequest: RestoreRequest{
		Repository: req.Repository, BackupID: nb.BackupID, VMs: req.VMs, Project: req.DrillProject, NamePrefix: "drill-",
		Networks: req.Networks, Flavors: req.Flavors, PostHooks: req.PostHooks, HealthCheck: req.HealthCheck, Operator: req.Operator}})
	tctx, cancelTimer := workflow.WithCancel(ctx)
	timer := workflow.NewTimer(tctx, timeout)
	var res RestoreResult
	var cloneErr error
	done, timedOut := false, false
	sel := workflow.NewSelector(ctx)
	sel.AddFuture(f, func(f workflow.Future) { done = true; cloneErr = f.Get(ctx, &res) })
	sel.AddFuture(timer, func(t workflow.Future) {
		if t.Get(ctx, nil) == nil {
			timedOut = true
		}
		cancelClone()
	})
	sel.Select(ctx)
	cancelTimer()
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	if !done {
		// Timed out, or the drill was cancelled: wait for the clone to
		// clean up after itself.
		cloneErr = f.Get(dctx, &res)
		if cloneErr == nil && timedOut {
			cloneErr = fmt.Errorf("the clone passed only after the drill's timeout of %s", timeout)
		}
	}
	cancelled := ctx.Err() != nil && !timedOut
	ready := workflow.Now(ctx).Sub(cloneStart)

	hcName := hookName(*req.HealthCheck)
	switch {
	case cloneErr == nil:
		rec.Result = repo.DrillPass
		rec.TimeToReady = ready
		for _, h := range res.Hooks {
			if h.Hook == hcName {
				rec.Guests = append(rec.Guests, drillGuest(h))
			}
		}
	case timedOut:
		rec.Result = repo.DrillFail
		rec.Error = fmt.Sprintf("the clone was not healthy within the drill's timeout of %s: %s", timeout, errMessage(cloneErr))
	default:
		rec.Result = repo.DrillFail
		rec.Error = errMessage(cloneErr)
		if outs, ok := hookFailure(cloneErr); ok && len(outs) > 0 {
			for _, h := range outs {
				if h.Hook == hcName {
					rec.Guests = append(rec.Guests, drillGuest(h))
				}
			}
			last := outs[len(outs)-1]
			what := "health check"
			if last.Hook != hcName {
				what = "post-hook"
			}
			rec.Error = fmt.Sprintf("%s %s in %s exited %d: %s", what, last.Hook, last.VM, last.ExitCode, tail(last.Output, DrillOutputTail))
		}
		if cancelled {
			rec.Error = "cancelled: " + rec.Error
		}
	}

	// Teardown, whatever happened.
	prog.Phase = "tearing down"
	rec.Teardown = "done"
	var del CloneDeleteResult
	err := workflow.ExecuteChildWorkflow(workflow.WithChildOptions(dctx, workflow.ChildWorkflowOptions{
		WorkflowID: CloneWorkflowID(clone) + "/delete", TaskQueue: activities.ControlQueue,
		TypedSearchAttributes: temporal.NewSearchAttributes(SAOperation.ValueSet("clone-delete"), SAWorkload.ValueSet(req.Workload)),
	}), CloneDelete, CloneDeleteRequest{Name: clone, Project: req.DrillProject, MissingOK: true}).Get(dctx, &del)
	var ae *temporal.ApplicationError
	switch {
	case err == nil, errors.As(err, &ae) && ae.Type() == activities.ErrNotFound:
		// Deleted, or the clone had removed itself already.
	default:
		rec.Teardown = "left: " + errMessage(err)
	}

	// The record beside the backup, and the search attributes.
	prog.Phase = "recording"
	rec.Finished = workflow.Now(dctx).UTC()
	recErr := workflow.ExecuteActivity(cloudOpts(dctx, 2*time.Minute, 5), a.RecordDrill,
		activities.RecordDrillInput{Repository: req.Repository, Drill: rec}).Get(dctx, nil)
	_ = workflow.UpsertTypedSearchAttributes(dctx, SADrill.ValueSet(rec.Result))
	// The SDK's metrics handler (the worker's client's; silent on replay).
	workflow.GetMetricsHandler(dctx).WithTags(map[string]string{"result": rec.Result, "workload": req.Workload}).Counter(DrillMetric).Inc(1)
	_ = workflow.UpsertMemo(dctx, map[string]any{"drill": map[string]any{"backup_id": rec.Backup, "result": rec.Result,
		"time_to_ready": rec.TimeToReady.String(), "error": rec.Error, "teardown": rec.Teardown}})
	prog.Phase = "done"

	switch {
	case cancelled:
		return &rec, cloneErr
	case rec.Result == repo.DrillFail:
		msg := fmt.Sprintf("drill of workload %s (backup %s) failed: %s", req.Workload, rec.Backup, rec.Error)
		if rec.Teardown != "done" {
			msg += "; teardown " + rec.Teardown
		}
		if recErr != nil {
			msg += fmt.Sprintf("; recording it failed: %v", recErr)
		}
		return &rec, temporal.NewNonRetryableApplicationError(msg, ErrDrillFailed, cloneErr, rec)
	case rec.Teardown != "done":
		return &rec, temporal.NewNonRetryableApplicationError(fmt.Sprintf("drill of workload %s (backup %s) passed, but its teardown %s",
			req.Workload, rec.Backup, rec.Teardown), ErrLeftovers, err)
	case recErr != nil:
		return &rec, fmt.Errorf("drill of workload %s (backup %s) passed; record it: %w", req.Workload, rec.Backup, recErr)
	}
	return &rec, nil
}

func drillGuest(h HookOutcome) repo.DrillGuest {
	return repo.DrillGuest{VM: h.VM, ExitCode: h.ExitCode, Seconds: h.Seconds, OutputTail: tail(h.Output, DrillOutputTail)}
}

// hookFailure finds a HookFailed error in err's chain and returns its hook
// outcomes.
func hookFailure(err error) ([]HookOutcome, bool) {
	for e := err; e != nil; e = errors.Unwrap(e) {
		var ae *temporal.ApplicationError
		if !errors.As(e, &ae) {
			return nil, false
		}
		if ae.Type() == ErrHookFailed {
			var outs []HookOutcome
			if ae.HasDetails() && ae.Details(&outs) == nil {
				return outs, true
			}
			return nil, true
		}
		e = ae
	}
	return nil, false
}

// errMessage is the message of the first application error in err's
// chain (a child workflow's own words), else err's.
func errMessage(err error) string {
	var ae *temporal.ApplicationError
	if errors.As(err, &ae) {
		return ae.Message()
	}
	var ce *temporal.CanceledError
	if errors.As(err, &ce) {
		return "cancelled"
	}
	return err.Error()
}

// tail returns the last n bytes of s, starting on a rune boundary.
func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	for len(s) > 0 && !utf8.RuneStart(s[0]) {
		s = s[1:]
	}
	return "…" + s
}
