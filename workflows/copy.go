package workflows

import (
	"fmt"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/raksha-backup/raksha/activities"
)

// Defaults of BackupRequest.ChildCopyThreshold and CopyBatchSize.
const (
	DefaultChildCopyThreshold = 32
	DefaultCopyBatchSize      = 32
)

// childCopyChange gates the copy phase's move into child workflows for
// workloads above the threshold: histories written before it (no marker)
// replay on the flat path, copies in the backup's own history.
const childCopyChange = "copy-large-workloads-in-child-workflows"

// copyWaitsForCancelChange marks histories whose copies are not started
// once the run is cancelled and are waited for when cancelled.
const copyWaitsForCancelChange = "copies-wait-for-cancellation"

// CopyBatch is the input of CopyDisks: some disks of one backup.
type CopyBatch struct {
	Repository string `json:"repository"`
	BackupID   string `json:"backup_id"`
	// Batch is this batch's number (1-based) of Batches.
	Batch   int `json:"batch"`
	Batches int `json:"batches"`
	// HeartbeatTimeout is BackupRequest.CopyHeartbeatTimeout.
	HeartbeatTimeout time.Duration `json:"heartbeat_timeout,omitempty"`
	VMs              []BatchVM     `json:"vms"`
	// Workload is the backup's workload, a label of the copies' metrics.
	Workload string `json:"workload,omitempty"`
}

// BatchVM is one VM with disks in a CopyBatch: the VM with all its disks
// (a copy needs them to find the VM's checkpoint again), its checkpoint,
// and the names of the disks this batch copies, in order.
type BatchVM struct {
	VM         activities.VM `json:"vm"`
	Checkpoint string        `json:"checkpoint,omitempty"`
	Copy       []string      `json:"copy"`
}

// CopyBatchResult is CopyDisks' result: one CopyResult per disk, in the
// batch's order.
type CopyBatchResult struct {
	Disks []activities.CopyResult `json:"disks"`
}

// CopyWorkflowID is the workflow id of batch n of a backup's copies: the
// parent's id, the backup id (unique per run), and the batch number.
func CopyWorkflowID(parentID, backupID string, n int) string {
	return fmt.Sprintf("%s/copy/%s/%d", parentID, backupID, n)
}

// copyJob is one disk copy: its copy-semaphore key, the host whose queue
// copies a qemu: disk, and the activity's input.
type copyJob struct {
	key  string
	host string
	in   activities.CopyInput
	// workload labels the copy's metrics ("" in batches of histories
	// from before CopyBatch.Workload).
	workload string
}

func (j copyJob) name() string { return j.in.VM + "/" + j.in.Disk.Name }

// runCopies copies every job in parallel, each under a permit of the global
// copy semaphore: across all workers at most its size of copies run at
// once. A permit goes back as soon as its copy ends; after a failed copy no
// further copy starts. It returns the results in the jobs' order, or the
// first failure (in the jobs' order). done is called after each copy that
// succeeded.
func runCopies(ctx workflow.Context, jobs []copyJob, heartbeat time.Duration, done func(copyJob)) ([]activities.CopyResult, error) {
	type pending struct {
		job copyJob
		res *activities.CopyResult
		err error
		// skipped: never started because another copy failed first
		skipped bool
	}
	var copies []*pending
	byKey := map[string]*pending{}
	var keys []string
	for _, j := range jobs {
		p := &pending{job: j}
		copies = append(copies, p)
		byKey[j.key] = p
		keys = append(keys, j.key)
	}
	left, failed := len(copies), false
	// Since copyWaitsForCancelChange, a cancelled run starts no copy and
	// waits for the running ones to stop (their heartbeats carry the
	// cancellation), so that its abort comes after the last chunk written.
	waitCancel := workflow.GetVersion(ctx, copyWaitsForCancelChange, workflow.DefaultVersion, 1) >= 1
	sel := workflow.NewSelector(ctx)
	requested := workflow.Now(ctx)
	var permitWait client.MetricsTimer
	if len(jobs) > 0 {
		permitWait = workflow.GetMetricsHandler(ctx).WithTags(map[string]string{"workload": jobs[0].workload,
			"repository": jobs[0].in.Repository}).Timer(MetricCopyPermitWait)
	}
	permits := RequestPermits(ctx, CopySemaphoreID, DefaultCopyPermits, keys...)
	permits.Watch(ctx, sel, func(key string, err error) {
		p := byKey[key]
		if err == nil && !failed {
			permitWait.Record(workflow.Now(ctx).Sub(requested))
		}
		switch {
		case err != nil:
			p.err = fmt.Errorf("copy %s: waiting for a copy permit: %w", p.job.name(), err)
			failed = true
			left--
			return
		case failed:
			p.err, p.skipped = fmt.Errorf("copy %s: not started after another copy failed", p.job.name()), true
			permits.Release(ctx, key)
			left--
			return
		case waitCancel && ctx.Err() != nil:
			p.err, failed = fmt.Errorf("copy %s: not started: %w", p.job.name(), temporal.NewCanceledError()), true
			permits.Release(ctx, key)
			left--
			return
		}
		actx := copyOpts(ctx, p.job.in.Disk, p.job.host, heartbeat)
		if waitCancel {
			o := workflow.GetActivityOptions(actx)
			o.WaitForCancellation = true
			actx = workflow.WithActivityOptions(actx, o)
		}
		f := workflow.ExecuteActivity(actx, a.CopyDisk, p.job.in)
		sel.AddFuture(f, func(f workflow.Future) {
			var cr activities.CopyResult
			if err := f.Get(ctx, &cr); err != nil {
				p.err = fmt.Errorf("copy %s: %w", p.job.name(), err)
				failed = true
			} else {
				p.res = &cr
				if done != nil {
					done(p.job)
				}
			}
			permits.Release(ctx, key)
			left--
		})
	})
	for left > 0 {
		sel.Select(ctx)
	}
	permits.Close(ctx)
	for _, p := range copies {
		if p.err != nil && !p.skipped {
			return nil, p.err
		}
	}
	out := make([]activities.CopyResult, 0, len(copies))
	for _, p := range copies {
		if p.err != nil {
			return nil, p.err // only skipped ones: cannot happen without a failure
		}
		out = append(out, *p.res)
	}
	return out, nil
}

// backupJobs lists the copies of a backup, VM by VM, disk by disk.
func backupJobs(req BackupRequest, backupID string, vms []activities.VM, st *runState) []copyJob {
	var jobs []copyJob
	for _, vm := range vms {
		for _, d := range vm.Disks {
			jobs = append(jobs, copyJob{key: backupID + "/" + vm.Name + "/" + d.Name, host: vm.Host, workload: req.Workload, in: activities.CopyInput{
				Repository: req.Repository, BackupID: backupID, VM: vm.Name, Instance: vm.Instance, Disk: d,
				Checkpoint: st.checkpointed[vm.Instance], VMDisks: vm.Disks}})
		}
	}
	return jobs
}

// batches splits a backup's copies into CopyBatches of at most size disks,
// in the order of backupJobs.
func batches(req BackupRequest, backupID string, vms []activities.VM, st *runState, size int) []CopyBatch {
	var out []CopyBatch
	var cur *CopyBatch
	n := 0
	for _, vm := range vms {
		for _, d := range vm.Disks {
			if cur == nil || n == size {
				out = append(out, CopyBatch{Repository: req.Repository, BackupID: backupID, HeartbeatTimeout: req.CopyHeartbeatTimeout, Workload: req.Workload})
				cur, n = &out[len(out)-1], 0
			}
			if len(cur.VMs) == 0 || cur.VMs[len(cur.VMs)-1].VM.Instance != vm.Instance {
				cur.VMs = append(cur.VMs, BatchVM{VM: vm, Checkpoint: st.checkpointed[vm.Instance]})
			}
			bv := &cur.VMs[len(cur.VMs)-1]
			bv.Copy = append(bv.Copy, d.Name)
			n++
		}
	}
	for i := range out {
		out[i].Batch, out[i].Batches = i+1, len(out)
	}
	return out
}

// jobs lists the copies of a batch in order.
func (b CopyBatch) jobs() ([]copyJob, error) {
	var jobs []copyJob
	for _, bv := range b.VMs {
		for _, name := range bv.Copy {
			var disk *activities.Disk
			for i := range bv.VM.Disks {
				if bv.VM.Disks[i].Name == name {
					disk = &bv.VM.Disks[i]
				}
			}
			if disk == nil {
				return nil, fmt.Errorf("copy batch %d: VM %s has no disk %s", b.Batch, bv.VM.Name, name)
			}
			jobs = append(jobs, copyJob{key: b.BackupID + "/" + bv.VM.Name + "/" + name, host: bv.VM.Host, workload: b.Workload, in: activities.CopyInput{
				Repository: b.Repository, BackupID: b.BackupID, VM: bv.VM.Name, Instance: bv.VM.Instance, Disk: *disk,
				Checkpoint: bv.Checkpoint, VMDisks: bv.VM.Disks}})
		}
	}
	return jobs, nil
}

// CopyDisks is the child workflow that copies one batch of a large
// workload's disks (WorkloadBackup starts it after the thaw), so that the
// backup's own history grows with the number of batches, not of disks.
// It copies as WorkloadBackup does for a small workload (the same
// activities, queues, semaphore and retries) and fails with the first
// failed copy. Its parent cancels it when it ends (ParentClosePolicy).
func CopyDisks(ctx workflow.Context, b CopyBatch) (*CopyBatchResult, error) {
	jobs, err := b.jobs()
	if err != nil {
		return nil, temporal.NewNonRetryableApplicationError(err.Error(), "InvalidRequest", err)
	}
	prog := &Progress{Phase: "copy", BackupID: b.BackupID, Disks: len(jobs), Done: map[string]bool{}}
	if err := workflow.SetQueryHandler(ctx, ProgressQuery, func() (*Progress, error) { return prog, nil }); err != nil {
		return nil, err
	}
	res, err := runCopies(ctx, jobs, b.HeartbeatTimeout, func(j copyJob) {
		prog.DisksDone++
		prog.Done[j.name()] = true
	})
	if err != nil {
		return nil, err
	}
	prog.Phase = "done"
	return &CopyBatchResult{Disks: res}, nil
}

// copyInChildren runs the batches as CopyDisks child workflows, all at
// once (the copy semaphore caps the copies), and returns the results in
// order. When one fails the others are cancelled; it returns after every
// child has ended, so that the caller's cleanup runs after the last copy.
func copyInChildren(ctx workflow.Context, req BackupRequest, bs []CopyBatch, prog *Progress) ([]activities.CopyResult, error) {
	parentID := workflow.GetInfo(ctx).WorkflowExecution.ID
	cctx, cancel := workflow.WithCancel(ctx)
	defer cancel()
	sa := []temporal.SearchAttributeUpdate{SAWorkload.ValueSet(req.Workload), SAOperation.ValueSet("backup-copy")}
	if req.Project != "" {
		sa = append(sa, SAProject.ValueSet(req.Project))
	}
	if req.Policy != "" {
		sa = append(sa, SAPolicy.ValueSet(req.Policy))
	}
	sel := workflow.NewSelector(ctx)
	results := make([]*CopyBatchResult, len(bs))
	errs := make([]error, len(bs))
	var firstErr error
	for i, b := range bs {
		id := CopyWorkflowID(parentID, b.BackupID, b.Batch)
		prog.CopyWorkflows = append(prog.CopyWorkflows, id)
		opts := workflow.WithChildOptions(cctx, workflow.ChildWorkflowOptions{
			WorkflowID: id,
			TaskQueue:  activities.ControlQueue,
			// The parent's end ends the copies: cancelled, they stop their
			// activities and give their copy permits back.
			ParentClosePolicy:     enumspb.PARENT_CLOSE_POLICY_REQUEST_CANCEL,
			WaitForCancellation:   true,
			TypedSearchAttributes: temporal.NewSearchAttributes(sa...),
		})
		f := workflow.ExecuteChildWorkflow(opts, CopyDisks, b)
		sel.AddFuture(f, func(f workflow.Future) {
			var r CopyBatchResult
			if err := f.Get(ctx, &r); err != nil {
				errs[i] = fmt.Errorf("copy batch %d of %d (%d VMs): %w", b.Batch, b.Batches, len(b.VMs), err)
				if firstErr == nil {
					firstErr = errs[i]
					cancel() // no point in the other copies: the backup fails
				}
				return
			}
			results[i] = &r
			for _, d := range r.Disks {
				prog.DisksDone++
				prog.Done[strings.TrimPrefix(d.Manifest, b.BackupID+"/")] = true
			}
		})
	}
	for range bs {
		sel.Select(ctx)
	}
	if firstErr != nil {
		return nil, firstErr
	}
	var out []activities.CopyResult
	for _, r := range results {
		out = append(out, r.Disks...)
	}
	return out, nil
}
