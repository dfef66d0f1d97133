// Package workflows holds Raksha's Temporal workflows: deterministic
// orchestration only (no I/O, no clocks, no goroutines of their own); every
// effect is an activity of package activities.
package workflows

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/raksha-backup/raksha/activities"
)

// Search attributes that make the Web UI useful (registered by the setup).
var (
	SAWorkload  = temporal.NewSearchAttributeKeyKeyword("RakshaWorkload")
	SAProject   = temporal.NewSearchAttributeKeyKeyword("RakshaProject")
	SAOperation = temporal.NewSearchAttributeKeyKeyword("RakshaOperation")
	SAPolicy    = temporal.NewSearchAttributeKeyKeyword("RakshaPolicy")
	// SABackup is the backup a drill (and its clone) took.
	SABackup = temporal.NewSearchAttributeKeyKeyword("RakshaBackup")
	// SADrill is a drill's result: pass or fail.
	SADrill = temporal.NewSearchAttributeKeyKeyword("RakshaDrill")
)

// SearchAttributeNames are the custom search attributes the workflows use.
var SearchAttributeNames = []string{"RakshaWorkload", "RakshaProject", "RakshaOperation", "RakshaPolicy", "RakshaBackup", "RakshaDrill"}

// A workload is keyed by (project, workload name): two projects' workloads
// of the same name share no lock, workflow id, base or retention. The lock
// goes by the project's id (activities.ResolveProject); base selection and
// prune by the project id discovery captured (activities.RecordProject).
// The workflow id, fixed by whoever starts the backup before any cloud is
// asked, carries the request's project as given (name or id: give the same
// one every time; the API gives ids), and without a project keeps the id
// of before.

// WorkloadLockID is the semaphore (one permit) that keeps two backups of a
// workload of a project (by its id) from running at once.
func WorkloadLockID(project, workload string) string {
	if project == "" {
		return "raksha-workload-lock/" + workload
	}
	return "raksha-workload-lock/" + project + "/" + workload
}

// BackupWorkflowID is the fixed workflow id of a backup of a project's
// workload: a workload never has two backups running, whether scheduled or
// manual.
func BackupWorkflowID(project, workload string) string {
	if project == "" {
		return "backup/" + workload
	}
	return "backup/" + project + "/" + workload
}

// BackupRequest is the input of WorkloadBackup.
type BackupRequest struct {
	Workload   string              `json:"workload"`
	Project    string              `json:"project,omitempty"`
	Policy     string              `json:"policy,omitempty"`
	Repository string              `json:"repository"`
	Selector   activities.Selector `json:"selector"`
	// Consistency is "app" (freeze the guests) or "crash" (no freeze).
	Consistency string `json:"consistency"`
	// OnAppFailure says what happens when a guest cannot be frozen or its
	// freeze outlived the deadline: "fail" the backup, or "crash": go on and
	// label the backup crash-consistent.
	OnAppFailure  string        `json:"on_app_failure,omitempty"`
	FreezeTimeout time.Duration `json:"freeze_timeout,omitempty"`
	// PreHooks and PostHooks are guest commands: operator input only. A
	// request with hooks that is not marked Operator is refused.
	PreHooks    []activities.Hook `json:"pre_hooks,omitempty"`
	PostHooks   []activities.Hook `json:"post_hooks,omitempty"`
	HookFailure string            `json:"hook_failure,omitempty"`
	// Operator marks a request that comes from the operator: a policy (the
	// operator's own files), the CLI on Temporal (an operator's access), or
	// the API for an admin; never set from a tenant's input. Hooks need it.
	Operator bool `json:"operator,omitempty"`
	// ExpireAfter gives the backup an expiry date this long after it starts
	// (0: none); prune removes expired backups that are not protected.
	ExpireAfter time.Duration `json:"expire_after,omitempty"`
	// CopyHeartbeatTimeout is how soon a copy whose worker died is retried
	// elsewhere (default 1 minute).
	CopyHeartbeatTimeout time.Duration `json:"copy_heartbeat_timeout,omitempty"`
	// ChildCopyThreshold: a workload with more disks than this copies them
	// in CopyDisks child workflows of CopyBatchSize disks each, so that the
	// backup's history stays bounded (0: DefaultChildCopyThreshold;
	// negative: never). Freeze, checkpoints, thaw and commit stay in the
	// backup's own workflow.
	ChildCopyThreshold int `json:"child_copy_threshold,omitempty"`
	// CopyBatchSize is the number of disks per child workflow (0:
	// DefaultCopyBatchSize).
	CopyBatchSize int                  `json:"copy_batch_size,omitempty"`
	Retention     activities.Retention `json:"retention,omitempty"`
	// Labels are the user's labels of the backup; a system label
	// (activities.SystemLabels) is refused.
	Labels map[string]string `json:"labels,omitempty"`
}

// BackupResult is the result (and memo) of WorkloadBackup.
type BackupResult struct {
	BackupID    string `json:"backup_id"`
	Consistency string `json:"consistency"`
	// FreezeWindows per VM, and the workload's (first freeze to last thaw).
	FreezeWindows  map[string]time.Duration `json:"freeze_windows,omitempty"`
	WorkloadWindow time.Duration            `json:"workload_window,omitempty"`
	VMs            int                      `json:"vms"`
	Disks          []activities.CopyResult  `json:"disks"`
	BytesRead      int64                    `json:"bytes_read"`
	BytesNew       int64                    `json:"bytes_new"`
	BytesReused    int64                    `json:"bytes_reused"`
	BytesStored    int64                    `json:"bytes_stored"`
	Pruned         []string                 `json:"pruned,omitempty"`
	Warnings       []string                 `json:"warnings,omitempty"`
}

// Progress is what the "progress" query returns; the CLI adds the pending
// CopyDisk activities' heartbeat details (bytes done) to it.
type Progress struct {
	Phase     string            `json:"phase"`
	BackupID  string            `json:"backup_id,omitempty"`
	DisksDone int               `json:"disks_done"`
	Disks     int               `json:"disks"`
	Done      map[string]bool   `json:"done,omitempty"`
	Windows   map[string]string `json:"freeze_windows,omitempty"`
	// CopyWorkflows are the CopyDisks child workflows of a large workload
	// (their pending CopyDisk activities carry the bytes done).
	CopyWorkflows []string `json:"copy_workflows,omitempty"`
}

// ProgressQuery is the query name for Progress.
const ProgressQuery = "progress"

// waitFreezeOnCancelChange gates waiting for the freezes, checkpoints
// and RBD snapshots to end when a backup is cancelled during them.
const waitFreezeOnCancelChange = "wait-for-freeze-and-checkpoints-on-cancel"

// finishInParallelChange gates finishing the VMs' checkpoints (cleanup before
// the commit, release after it, abort after a failure) on all VMs at once
// instead of one VM after another.
const finishInParallelChange = "finish-checkpoints-in-parallel"

// ErrNotAppConsistent is the failure type of a backup that had to be
// application-consistent and could not be.
const ErrNotAppConsistent = "NotApplicationConsistent"

var a *activities.Activities

// ShortHeartbeat is the heartbeat timeout of the control and host
// activities: the workers heartbeat every activity that has one
// (temporalx.AutoHeartbeat), so a dead worker or a completion lost with a
// killed Temporal server is noticed this soon instead of at the activity's
// start-to-close timeout.
const ShortHeartbeat = 20 * time.Second

// shortHeartbeatChange gates ShortHeartbeat on the control and host
// activities, for histories recorded before it.
const shortHeartbeatChange = "short-heartbeat"

func controlOpts(ctx workflow.Context, timeout time.Duration) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           activities.ControlQueue,
		StartToCloseTimeout: timeout,
		HeartbeatTimeout:    shortHeartbeat(ctx),
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: time.Minute,
			MaximumAttempts: 5, NonRetryableErrorTypes: activities.NonRetryable},
	})
}

// shortHeartbeat is ShortHeartbeat, or none in histories recorded before it.
func shortHeartbeat(ctx workflow.Context) time.Duration {
	if workflow.GetVersion(ctx, shortHeartbeatChange, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		return 0
	}
	return ShortHeartbeat
}

func hostOpts(ctx workflow.Context, host string, timeout time.Duration, attempts int32) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              activities.HostQueue(host),
		ScheduleToStartTimeout: time.Minute, // a host worker that is not there fails fast
		StartToCloseTimeout:    timeout,
		HeartbeatTimeout:       shortHeartbeat(ctx),
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: 30 * time.Second,
			MaximumAttempts: attempts, NonRetryableErrorTypes: activities.NonRetryable},
	})
}

func copyOpts(ctx workflow.Context, d activities.Disk, host string, heartbeat time.Duration) workflow.Context {
	if heartbeat <= 0 {
		heartbeat = time.Minute
	}
	queue := activities.DataQueue
	if d.Locator.HostLocal() {
		queue = activities.HostQueue(host)
	}
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           queue,
		StartToCloseTimeout: 24 * time.Hour,
		HeartbeatTimeout:    heartbeat,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 2 * time.Second, BackoffCoefficient: 2, MaximumInterval: time.Minute,
			MaximumAttempts: 10, NonRetryableErrorTypes: activities.NonRetryable},
	})
}

// WorkloadBackup backs up a workload: discover → freeze all VMs in parallel
// → checkpoint all disks → thaw all → copy every disk in parallel → commit →
// release older checkpoints → prune. Guests are thawed on every path (also on
// failure and cancellation, through a disconnected context); a failed backup
// commits nothing and leaves the previous checkpoints usable.
func WorkloadBackup(ctx workflow.Context, req BackupRequest) (*BackupResult, error) {
	start := workflow.Now(ctx)
	res, err := workloadBackup(ctx, req)
	recordDuration(ctx, MetricBackupDuration, start, err, map[string]string{"workload": req.Workload, "repository": req.Repository})
	return res, err
}

// workloadBackup is WorkloadBackup's run, which that times.
func workloadBackup(ctx workflow.Context, req BackupRequest) (*BackupResult, error) {
	log := workflow.GetLogger(ctx)
	isolated := workflow.GetVersion(ctx, tenantIsolationChange, workflow.DefaultVersion, 1) >= 1
	if err := validate(req); err != nil {
		return nil, temporal.NewNonRetryableApplicationError(err.Error(), "InvalidRequest", err)
	}
	if isolated {
		if err := validateIsolation(req); err != nil {
			return nil, temporal.NewNonRetryableApplicationError(err.Error(), "InvalidRequest", err)
		}
	}
	freezeTimeout := req.FreezeTimeout
	if freezeTimeout <= 0 {
		freezeTimeout = 10 * time.Second
	}
	prog := &Progress{Phase: "discover", Done: map[string]bool{}, Windows: map[string]string{}}
	if err := workflow.SetQueryHandler(ctx, ProgressQuery, func() (*Progress, error) { return prog, nil }); err != nil {
		return nil, err
	}
	_ = workflow.UpsertTypedSearchAttributes(ctx, SAOperation.ValueSet("backup"), SAWorkload.ValueSet(req.Workload))

	// The backup id is fixed once, deterministically, from workflow time.
	var backupID string
	if err := workflow.SideEffect(ctx, func(workflow.Context) any {
		return fmt.Sprintf("%s-%s", workflow.Now(ctx).UTC().Format("20060102-150405"), shortID(workflow.GetInfo(ctx).WorkflowExecution.RunID))
	}).Get(&backupID); err != nil {
		return nil, err
	}
	prog.BackupID = backupID

	// One backup of a workload at a time, whoever started it: a schedule's
	// overlap policy only covers its own runs, and its workflow ids carry the
	// scheduled time. A second backup waits here for the first to end.
	prog.Phase = "waiting for the workload's other backup"
	lockID := WorkloadLockID("", req.Workload)
	if isolated {
		// The lock is the project's by id, however the request named it.
		var project string
		if err := workflow.ExecuteActivity(controlOpts(ctx, 2*time.Minute), a.ResolveProject,
			activities.ResolveProjectInput{Project: req.Project}).Get(ctx, &project); err != nil {
			return nil, fmt.Errorf("workload %s: %w", req.Workload, err)
		}
		lockID = WorkloadLockID(project, req.Workload)
	}
	lock := RequestPermits(ctx, lockID, 1, "backup")
	if _, err := lock.Next(ctx); err != nil {
		return nil, fmt.Errorf("wait for workload %s's other backup: %w", req.Workload, err)
	}
	defer func() {
		dctx, _ := workflow.NewDisconnectedContext(ctx)
		lock.Close(dctx)
	}()
	prog.Phase = "discover"
	labels := map[string]string{"workload": req.Workload}
	if req.Project != "" {
		labels["project"] = req.Project
	}
	if req.Policy != "" {
		labels["policy"] = req.Policy
	}
	for k, v := range req.Labels {
		labels[k] = v
	}
	var expires *time.Time
	if req.ExpireAfter > 0 {
		t := workflow.Now(ctx).Add(req.ExpireAfter).UTC()
		expires = &t
	}
	var begin activities.BeginResult
	err := workflow.ExecuteActivity(controlOpts(ctx, 10*time.Minute), a.Begin, activities.BeginInput{
		Repository: req.Repository, BackupID: backupID, Workload: req.Workload, Project: req.Project,
		Policy: req.Policy, Selector: req.Selector, Labels: labels, Expires: expires}).Get(ctx, &begin)
	if err != nil {
		return nil, fmt.Errorf("discover workload %s: %w", req.Workload, err)
	}
	res := &BackupResult{BackupID: backupID, Consistency: req.Consistency, VMs: len(begin.VMs),
		FreezeWindows: map[string]time.Duration{}}
	for _, vm := range begin.VMs {
		prog.Disks += len(vm.Disks)
	}

	// From here on, every exit goes through cleanup.
	st := &runState{frozen: map[string]bool{}, checkpointed: map[string]string{}}
	committed := false
	defer func() {
		if committed {
			return
		}
		dctx, _ := workflow.NewDisconnectedContext(ctx)
		cleanupFailed(dctx, req, begin, st)
	}()

	// A cancel while the freezes or checkpoints run waits for them to end
	// (they are single attempts, bounded by the freeze timeout): a thaw or
	// abort sent while they still run would come before the freeze or the
	// new bitmap and leave a guest frozen until its guard's deadline, or a
	// checkpoint behind. Earlier histories (no marker) did not wait.
	waitCancel := workflow.GetVersion(ctx, waitFreezeOnCancelChange, workflow.DefaultVersion, 1) >= 1
	st.parallelFinish = workflow.GetVersion(ctx, finishInParallelChange, workflow.DefaultVersion, 1) >= 1
	inFreeze := func(actx workflow.Context) workflow.Context {
		if !waitCancel {
			return actx
		}
		o := workflow.GetActivityOptions(actx)
		o.WaitForCancellation = true
		return workflow.WithActivityOptions(actx, o)
	}

	// Freeze.
	consistency := req.Consistency
	var freezeSent map[string]time.Time // by VM name, as the guests' hosts saw it
	if consistency == "app" {
		preHooks := req.PreHooks
		if len(preHooks) > 0 && workflow.GetVersion(ctx, preHooksFirstChange, workflow.DefaultVersion, 1) >= 1 {
			prog.Phase = "pre-hooks"
			if err := runPreHooks(ctx, req, begin.VMs); err != nil {
				return nil, err
			}
			preHooks = nil // they ran; Freeze only freezes
		}
		prog.Phase = "freeze"
		futures := map[string]workflow.Future{}
		freezeSent = map[string]time.Time{}
		for _, vm := range begin.VMs {
			st.frozen[vm.Instance] = true // Thaw is idempotent: a failed freeze is thawed too
			futures[vm.Instance] = workflow.ExecuteActivity(inFreeze(hostOpts(ctx, vm.Host, freezeTimeout+time.Minute, 1)), a.Freeze,
				activities.FreezeInput{Instance: vm.Instance, Timeout: freezeTimeout, PreHooks: preHooks,
					PostHooks: req.PostHooks, HookFailure: req.HookFailure})
		}
		var freezeErr error
		for _, vm := range begin.VMs {
			var fr activities.FreezeResult
			err := futures[vm.Instance].Get(ctx, &fr)
			if err == nil && !fr.NoAgent {
				freezeSent[vm.Name] = fr.FreezeSent
			}
			switch {
			case err != nil && freezeErr == nil:
				freezeErr = fmt.Errorf("freeze %s: %w", vm.Name, err)
			case err == nil && fr.NoAgent:
				msg := fmt.Sprintf("VM %s has no answering guest agent", vm.Name)
				if req.OnAppFailure != "crash" {
					freezeErr = temporal.NewNonRetryableApplicationError(msg, ErrNotAppConsistent, nil)
				} else {
					res.Warnings = append(res.Warnings, msg+": crash-consistent")
					consistency = "crash"
				}
			}
		}
		if freezeErr != nil {
			return nil, freezeErr
		}
	}

	// Checkpoint every VM's disks, all inside the freeze window.
	prog.Phase = "snapshot"
	cpFutures := map[string]workflow.Future{}
	for _, vm := range begin.VMs {
		if !hasHostLocal(vm) {
			continue // no host-local disk: nothing for the host worker to fix
		}
		cpFutures[vm.Instance] = workflow.ExecuteActivity(inFreeze(hostOpts(ctx, vm.Host, freezeTimeout, 1)), a.Checkpoint,
			activities.CheckpointInput{BackupID: backupID, Instance: vm.Instance, Disks: vm.Disks, Repository: req.Repository})
	}
	var rbdFuture workflow.Future
	if rbdDisks := disksOfKind(begin.VMs, "rbd"); len(rbdDisks) > 0 {
		rbdFuture = workflow.ExecuteActivity(inFreeze(dataOpts(ctx, freezeTimeout)), a.SnapshotRBD,
			activities.RBDSnapshotInput{BackupID: backupID, Disks: rbdDisks})
	}
	var cpErr error
	if rbdFuture != nil {
		if err := rbdFuture.Get(ctx, nil); err != nil {
			cpErr = fmt.Errorf("snapshot RBD disks: %w", err)
		}
	}
	for _, vm := range begin.VMs {
		f, ok := cpFutures[vm.Instance]
		if !ok {
			continue
		}
		var cr activities.CheckpointResult
		if err := f.Get(ctx, &cr); err != nil {
			if cpErr == nil {
				cpErr = fmt.Errorf("checkpoint %s: %w", vm.Name, err)
			}
			continue
		}
		st.checkpointed[vm.Instance] = cr.Bitmap
	}

	// Thaw, always, before anything else can fail.
	if consistency == "app" || req.Consistency == "app" {
		prog.Phase = "thaw"
		windows, guardFired, err := thawAll(ctx, begin.VMs, st)
		for k, w := range windows {
			res.FreezeWindows[k] = w
			prog.Windows[k] = w.String()
		}
		res.WorkloadWindow = workloadWindow(freezeSent, windows)
		if err != nil {
			return nil, err
		}
		if len(guardFired) > 0 && consistency == "app" {
			msg := notConsistent(guardFired)
			if req.OnAppFailure != "crash" {
				return nil, temporal.NewNonRetryableApplicationError(msg, ErrNotAppConsistent, nil)
			}
			res.Warnings = append(res.Warnings, msg+": crash-consistent")
			consistency = "crash"
		}
	}
	if cpErr != nil {
		return nil, cpErr
	}
	res.Consistency = consistency

	// Copy every disk in parallel, each under a permit of the global copy
	// semaphore (runCopies). A large workload copies in child workflows,
	// one per batch of disks, so that this history stays bounded; histories
	// from before that change (no version marker) replay on the flat path.
	prog.Phase = "copy"
	var copied []activities.CopyResult
	var copyErr error
	threshold, batchSize := req.ChildCopyThreshold, req.CopyBatchSize
	if threshold == 0 {
		threshold = DefaultChildCopyThreshold
	}
	if batchSize <= 0 {
		batchSize = DefaultCopyBatchSize
	}
	if v := workflow.GetVersion(ctx, childCopyChange, workflow.DefaultVersion, 1); v >= 1 && threshold > 0 && prog.Disks > threshold {
		copied, copyErr = copyInChildren(ctx, req, batches(req, backupID, begin.VMs, st, batchSize), prog)
	} else {
		copied, copyErr = runCopies(ctx, backupJobs(req, backupID, begin.VMs, st), req.CopyHeartbeatTimeout, func(j copyJob) {
			prog.DisksDone++
			prog.Done[j.name()] = true
		})
	}
	if copyErr != nil {
		return nil, copyErr
	}
	var manifests []string
	for _, cr := range copied {
		res.Disks = append(res.Disks, cr)
		manifests = append(manifests, cr.Manifest)
		res.BytesRead += cr.BytesRead
		res.BytesNew += cr.BytesNew
		res.BytesReused += cr.BytesReused
		res.BytesStored += cr.BytesStored
	}

	// The exports of each VM can go now; the new bitmaps stay.
	prog.Phase = "commit"
	if failed := finishCheckpoints(ctx, backupID, begin.VMs, activities.FinishCleanup, 3, st.parallelFinish, true); len(failed) > 0 {
		var errs []error
		for _, f := range failed {
			errs = append(errs, fmt.Errorf("finish checkpoint of %s: %w", f.vm, f.err))
		}
		return nil, errors.Join(errs...)
	}
	var cres activities.CommitResult
	if err := workflow.ExecuteActivity(controlOpts(ctx, 10*time.Minute), a.Commit, activities.CommitInput{
		Repository: req.Repository, BackupID: backupID, Consistency: consistency, Manifests: manifests,
		FreezeWindows: res.FreezeWindows, WorkloadWindow: res.WorkloadWindow}).Get(ctx, &cres); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	committed = true

	// Release older checkpoints (one base per disk remains) and prune. The
	// backup is committed: failures here are warnings, never data loss.
	prog.Phase = "release"
	if rbdDisks := disksOfKind(begin.VMs, "rbd"); len(rbdDisks) > 0 {
		err := workflow.ExecuteActivity(dataOpts(ctx, 5*time.Minute), a.FinishRBD,
			activities.RBDFinishInput{BackupID: backupID, Disks: rbdDisks, Committed: true}).Get(ctx, nil)
		if err != nil {
			res.Warnings = append(res.Warnings, fmt.Sprintf("release older RBD snapshots: %v", err))
		}
	}
	for _, f := range finishCheckpoints(ctx, backupID, begin.VMs, activities.FinishRelease, 5, st.parallelFinish, false) {
		res.Warnings = append(res.Warnings, fmt.Sprintf("release older checkpoints of %s: %v", f.vm, f.err))
	}
	if req.Retention != (activities.Retention{}) {
		prog.Phase = "prune"
		var pr activities.PruneResult
		in := activities.PruneInput{Repository: req.Repository, Labels: map[string]string{"workload": req.Workload}, Retention: req.Retention}
		if isolated {
			in.ByProject, in.Project = true, begin.ProjectID
		}
		err := workflow.ExecuteActivity(controlOpts(ctx, 30*time.Minute), a.Prune, in).Get(ctx, &pr)
		if err != nil {
			res.Warnings = append(res.Warnings, fmt.Sprintf("prune: %v", err))
		}
		res.Pruned = pr.Removed
	}
	prog.Phase = "done"
	for _, w := range res.Warnings {
		log.Warn(w)
	}
	_ = workflow.UpsertMemo(ctx, map[string]any{"result": summary(res)})
	return res, nil
}

type runState struct {
	frozen       map[string]bool   // instance → a freeze may be in effect
	checkpointed map[string]string // instance → new bitmap
	// parallelFinish: this run finishes checkpoints on all VMs at once
	// (finishInParallelChange).
	parallelFinish bool
}

// vmFailure is an activity of one VM that failed.
type vmFailure struct {
	vm  string
	err error
}

// finishCheckpoints runs FinishCheckpoint with action on every VM that has
// qemu disks and returns the failures in VM order. In parallel it starts
// them all and waits for all. Otherwise it runs them one after another, as
// histories from before finishInParallelChange did, stopping at the first
// failure when stopAtFirst is set.
func finishCheckpoints(ctx workflow.Context, backupID string, vms []activities.VM, action string, attempts int32, parallel, stopAtFirst bool) []vmFailure {
	start := func(vm activities.VM) workflow.Future {
		return workflow.ExecuteActivity(hostOpts(ctx, vm.Host, 5*time.Minute, attempts), a.FinishCheckpoint,
			activities.FinishInput{BackupID: backupID, Instance: vm.Instance, Disks: vm.Disks, Action: action})
	}
	var failed []vmFailure
	futures := make([]workflow.Future, len(vms))
	for i, vm := range vms {
		if !hasHostLocal(vm) {
			continue
		}
		if parallel {
			futures[i] = start(vm)
			continue
		}
		if err := start(vm).Get(ctx, nil); err != nil {
			failed = append(failed, vmFailure{vm.Name, err})
			if stopAtFirst {
				return failed
			}
		}
	}
	for i, f := range futures {
		if f == nil {
			continue
		}
		if err := f.Get(ctx, nil); err != nil {
			failed = append(failed, vmFailure{vms[i].Name, err})
		}
	}
	return failed
}

// lostThaw is a VM whose thaw was not its freezer's in time.
type lostThaw struct {
	vm string
	// lost says why its freezer's thaw was lost (ThawResult.Lost); empty
	// when the freezer's own guard thawed at the deadline.
	lost string
}

// notConsistent says which VMs' freezes ended without a timely thaw and
// why: the guard's deadline passed, or the host worker holding the freeze
// died (its thaw lost), naming each VM.
func notConsistent(vms []lostThaw) string {
	var guard, lost []string
	for _, v := range vms {
		if v.lost == "" {
			guard = append(guard, v.vm)
		} else {
			lost = append(lost, fmt.Sprintf("%s: %s", v.vm, v.lost))
		}
	}
	var parts []string
	if len(guard) > 0 {
		parts = append(parts, fmt.Sprintf("freeze deadline passed before thaw on %v", guard))
	}
	if len(lost) > 0 {
		parts = append(parts, fmt.Sprintf("thaw lost on %s", strings.Join(lost, "; ")))
	}
	return strings.Join(parts, "; ")
}

// tenantIsolationChange gates keying a workload by its project (the lock
// id, prune by the captured project) and refusing a request whose labels
// set a system label or whose hooks are not the operator's
// (validateIsolation).
const tenantIsolationChange = "tenant-isolation"

// validateIsolation refuses what a backup request may not carry: a user
// label that sets a system label, and hooks in a request not marked as the
// operator's.
func validateIsolation(req BackupRequest) error {
	if err := activities.CheckUserLabels(req.Labels); err != nil {
		return fmt.Errorf("backup of workload %s: %w", req.Workload, err)
	}
	if (len(req.PreHooks) > 0 || len(req.PostHooks) > 0) && !req.Operator {
		return fmt.Errorf("backup of workload %s: %w", req.Workload, errHooksNotOperator)
	}
	return nil
}

// errHooksNotOperator refuses hooks from a request not marked Operator.
var errHooksNotOperator = errors.New("hooks run guest commands and come only from an operator's policy or an admin's request; this request is not marked operator")

// preHooksFirstChange gates running the pre-hooks of every guest before the
// coordinated freeze starts (runPreHooks) instead of inside each guest's
// Freeze, where a slow hook on one guest lengthened the freeze windows of
// the guests already frozen.
const preHooksFirstChange = "pre-hooks-before-freeze"

// hooksTimeout bounds a run of hooks: each hook's timeout (default 30 s)
// plus a minute.
func hooksTimeout(hs []activities.Hook) time.Duration {
	d := time.Minute
	for _, h := range hs {
		if h.Timeout > 0 {
			d += h.Timeout
		} else {
			d += 30 * time.Second
		}
	}
	return d
}

// runPreHooks runs the pre-hooks on every guest at once, before any guest is
// frozen. If any fails (under on_failure: fail), the post-hooks run on the
// guests whose pre-hooks succeeded (to undo what they did, as a thaw would),
// and the backup fails naming the guest.
func runPreHooks(ctx workflow.Context, req BackupRequest, vms []activities.VM) error {
	futures := map[string]workflow.Future{}
	for _, vm := range vms {
		futures[vm.Instance] = workflow.ExecuteActivity(hostOpts(ctx, vm.Host, hooksTimeout(req.PreHooks), 1), a.RunHooks,
			activities.RunHooksInput{Instance: vm.Instance, Phase: "pre", Hooks: req.PreHooks, HookFailure: req.HookFailure})
	}
	var failed error
	var ran []activities.VM
	for _, vm := range vms {
		var r activities.RunHooksResult
		err := futures[vm.Instance].Get(ctx, &r)
		switch {
		case err != nil && failed == nil:
			failed = fmt.Errorf("pre-hooks on %s: %w", vm.Name, err)
		case err == nil && !r.NoAgent:
			ran = append(ran, vm)
		}
	}
	if failed == nil {
		return nil
	}
	if len(req.PostHooks) > 0 {
		undo := map[string]workflow.Future{}
		for _, vm := range ran {
			undo[vm.Instance] = workflow.ExecuteActivity(hostOpts(ctx, vm.Host, hooksTimeout(req.PostHooks), 1), a.RunHooks,
				activities.RunHooksInput{Instance: vm.Instance, Phase: "post", Hooks: req.PostHooks, HookFailure: "continue"})
		}
		for _, vm := range ran {
			if err := undo[vm.Instance].Get(ctx, nil); err != nil {
				workflow.GetLogger(ctx).Error("post-hooks after a failed pre-hook failed", "vm", vm.Name, "error", err)
			}
		}
	}
	return failed
}

// workloadWindow is the workload's freeze window: from the first guest's
// freeze to the last guest's thaw (each thaw is its freeze plus its window,
// both by that guest's host's clock). Without the freeze times (histories
// from before they were kept) it is the largest single window.
func workloadWindow(freezeSent map[string]time.Time, windows map[string]time.Duration) time.Duration {
	var first, last time.Time
	var largest time.Duration
	complete := true
	for vm, w := range windows {
		largest = max(largest, w)
		sent := freezeSent[vm]
		if sent.IsZero() {
			complete = false
			continue
		}
		if first.IsZero() || sent.Before(first) {
			first = sent
		}
		if end := sent.Add(w); end.After(last) {
			last = end
		}
	}
	if !complete || first.IsZero() {
		return largest
	}
	return max(last.Sub(first), largest)
}

// thawAll thaws every VM that may be frozen, in parallel, and returns the
// freeze window of each and the VMs whose freeze ended without its
// owner's timely thaw (the guard fired, or the owner is gone).
func thawAll(ctx workflow.Context, vms []activities.VM, st *runState) (map[string]time.Duration, []lostThaw, error) {
	windows := map[string]time.Duration{}
	var guard []lostThaw
	futures := map[string]workflow.Future{}
	for _, vm := range vms {
		if !st.frozen[vm.Instance] {
			continue
		}
		futures[vm.Instance] = workflow.ExecuteActivity(hostOpts(ctx, vm.Host, 2*time.Minute, 5), a.Thaw,
			activities.ThawInput{Instance: vm.Instance})
	}
	var errs []error
	for _, vm := range vms {
		f, ok := futures[vm.Instance]
		if !ok {
			continue
		}
		var tr activities.ThawResult
		if err := f.Get(ctx, &tr); err != nil {
			errs = append(errs, fmt.Errorf("thaw %s: %w", vm.Name, err))
			continue
		}
		delete(st.frozen, vm.Instance)
		if tr.WasFrozen {
			windows[vm.Name] = tr.Window
		}
		if tr.GuardThawed {
			guard = append(guard, lostThaw{vm: vm.Name, lost: tr.Lost})
		}
	}
	sort.Slice(guard, func(i, j int) bool { return guard[i].vm < guard[j].vm })
	return windows, guard, errors.Join(errs...)
}

// cleanupFailed undoes a backup that will not be committed: thaw, abort
// the checkpoints (the previous bitmaps stay complete bases), remove the
// exports, drop the repository session.
func cleanupFailed(ctx workflow.Context, req BackupRequest, begin activities.BeginResult, st *runState) {
	log := workflow.GetLogger(ctx)
	if _, _, err := thawAll(ctx, begin.VMs, st); err != nil {
		log.Error("thaw after a failure failed; the host guards thaw at the freeze deadline", "error", err)
	}
	for _, f := range finishCheckpoints(ctx, begin.BackupID, begin.VMs, activities.FinishAbort, 5, st.parallelFinish, false) {
		log.Error("cleanup of a failed checkpoint failed", "vm", f.vm, "error", f.err)
	}
	if rbdDisks := disksOfKind(begin.VMs, "rbd"); len(rbdDisks) > 0 {
		err := workflow.ExecuteActivity(dataOpts(ctx, 5*time.Minute), a.FinishRBD,
			activities.RBDFinishInput{BackupID: begin.BackupID, Disks: rbdDisks}).Get(ctx, nil)
		if err != nil {
			log.Error("dropping the RBD snapshots of a failed backup failed", "error", err)
		}
	}
	err := workflow.ExecuteActivity(controlOpts(ctx, 10*time.Minute), a.Abort,
		activities.AbortInput{Repository: req.Repository, BackupID: begin.BackupID}).Get(ctx, nil)
	if err != nil {
		log.Error("abort of the repository session failed; gc cleans up after it", "error", err)
	}
}

// hasHostLocal reports whether vm has a disk only its host worker reads
// (qemu: or libvirt:): its checkpoint and finish run on the host's queue.
func hasHostLocal(vm activities.VM) bool {
	for _, d := range vm.Disks {
		if d.Locator.HostLocal() {
			return true
		}
	}
	return false
}

// disksOfKind lists the disks of every VM whose locator is of kind.
func disksOfKind(vms []activities.VM, kind string) []activities.Disk {
	var out []activities.Disk
	for _, vm := range vms {
		for _, d := range vm.Disks {
			if d.Locator.Kind() == kind {
				out = append(out, d)
			}
		}
	}
	return out
}

// dataOpts runs an activity on the data workers (Ceph access).
func dataOpts(ctx workflow.Context, timeout time.Duration) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              activities.DataQueue,
		ScheduleToStartTimeout: time.Minute,
		StartToCloseTimeout:    timeout,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: 30 * time.Second,
			MaximumAttempts: 5, NonRetryableErrorTypes: activities.NonRetryable},
	})
}

func validate(req BackupRequest) error {
	switch {
	case req.Workload == "":
		return errors.New("workload name is empty")
	case req.Repository == "":
		return errors.New("repository id is empty")
	case req.Consistency != "app" && req.Consistency != "crash":
		return fmt.Errorf("consistency %q: want app or crash", req.Consistency)
	case req.OnAppFailure != "" && req.OnAppFailure != "fail" && req.OnAppFailure != "crash":
		return fmt.Errorf("on_app_failure %q: want fail or crash", req.OnAppFailure)
	}
	return nil
}

// shortID takes 6 hex digits from the end of a run id (run ids are UUIDv7:
// their start is a timestamp, their end random).
func shortID(runID string) string {
	out := make([]byte, 0, 6)
	for i := len(runID) - 1; i >= 0 && len(out) < 6; i-- {
		c := runID[i]
		if c >= '0' && c <= '9' || c >= 'a' && c <= 'f' {
			out = append(out, c)
		}
	}
	return string(out)
}

func summary(r *BackupResult) map[string]any {
	return map[string]any{"backup_id": r.BackupID, "consistency": r.Consistency, "vms": r.VMs, "disks": len(r.Disks),
		"bytes_read": r.BytesRead, "bytes_new": r.BytesNew, "bytes_reused": r.BytesReused, "bytes_stored": r.BytesStored,
		"workload_freeze_window": r.WorkloadWindow.String()}
}
