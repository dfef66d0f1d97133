package workflows

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
)

// RestoreRequest is the input of Restore (and, with the clone fields, of
// Clone).
type RestoreRequest struct {
	Repository string `json:"repository"`
	BackupID   string `json:"backup_id"`
	// VMs selects servers (name in the backup, captured name or id); empty:
	// all. Volumes selects single volumes (captured id or name) to restore
	// to new volumes without making servers.
	VMs     []string `json:"vms,omitempty"`
	Volumes []string `json:"volumes,omitempty"`
	// Project is where new servers and volumes go (name or id); empty: the
	// backup's project.
	Project string `json:"project,omitempty"`
	// NamePrefix goes before the captured names of new servers and volumes.
	NamePrefix string `json:"name_prefix,omitempty"`
	// Networks and Flavors map captured names or ids to the ones to use.
	Networks     map[string]string `json:"networks,omitempty"`
	Flavors      map[string]string `json:"flavors,omitempty"`
	KeepFixedIPs bool              `json:"keep_fixed_ips,omitempty"`
	// InPlace rolls the captured servers' disks back: each server is
	// stopped, its volumes and ephemeral disks overwritten from the backup,
	// and started again (if it was running). Nothing new is made.
	InPlace bool `json:"in_place,omitempty"`
	// Metadata is set on every new server and volume; a key with an empty
	// value removes a captured key (a clone drops raksha.workload, so that
	// the clone does not join the production workload's backups).
	Metadata map[string]string `json:"metadata,omitempty"`
	// PostHooks run in every new guest after it booted on its restored disks
	// (data masking for a staging clone); HealthCheck runs last. A failing
	// hook or health check fails the run, and what it made is deleted.
	// Hooks and the health check are guest commands: operator input only
	// (see Operator).
	PostHooks   []activities.Hook `json:"post_hooks,omitempty"`
	HealthCheck *activities.Hook  `json:"health_check,omitempty"`
	// Operator marks a request that comes from the operator (the CLI on
	// Temporal, or the API for an admin), never set from a tenant's input.
	// Post-restore hooks and a health check in a request without it are
	// refused.
	Operator bool `json:"operator,omitempty"`
	// Operation is "restore" or "clone" (the RakshaOperation search
	// attribute); set by the workflow.
	Operation string `json:"operation,omitempty"`
	// MaxParallelWrites caps the disks written at once (0:
	// DefaultParallelWrites); each write fetches chunks in parallel itself.
	MaxParallelWrites int `json:"max_parallel_writes,omitempty"`
}

// DefaultParallelWrites is how many disks a restore writes at once.
const DefaultParallelWrites = 8

// RestoredServer is a server a restore made (or rolled back).
type RestoredServer struct {
	VM       string `json:"vm"` // its name in the backup
	From     string `json:"from"`
	ServerID string `json:"server_id"`
	Name     string `json:"name,omitempty"`
	Host     string `json:"host,omitempty"`
	Instance string `json:"instance,omitempty"`
}

// RestoredVolume is a volume a restore made (or overwrote in place).
type RestoredVolume struct {
	Manifest string `json:"manifest"`
	From     string `json:"from,omitempty"`
	VolumeID string `json:"volume_id"`
}

// HookOutcome is one post-restore hook or health check run in a guest.
type HookOutcome struct {
	VM       string  `json:"vm"`
	Hook     string  `json:"hook"`
	ExitCode int     `json:"exit_code"`
	Seconds  float64 `json:"seconds"`
	Output   string  `json:"output,omitempty"`
}

// RestoreResult is the result (and memo) of Restore and Clone.
type RestoreResult struct {
	RestoreID string                       `json:"restore_id"`
	BackupID  string                       `json:"backup_id"`
	Project   string                       `json:"project"`
	InPlace   bool                         `json:"in_place,omitempty"`
	Servers   []RestoredServer             `json:"servers,omitempty"`
	Volumes   []RestoredVolume             `json:"volumes,omitempty"`
	Disks     []activities.WriteDiskResult `json:"disks"`
	Hooks     []HookOutcome                `json:"hooks,omitempty"`
	// Bytes is the size of the disks written, BytesFetched the chunk data
	// read from the repository.
	Bytes        int64 `json:"bytes"`
	BytesFetched int64 `json:"bytes_fetched"`
	// WriteSeconds is the wall time of the data phase, Seconds of the run.
	WriteSeconds float64 `json:"write_seconds"`
	Seconds      float64 `json:"seconds"`
}

// RestoreProgress is what the "progress" query of Restore returns; the CLI
// adds the pending WriteDisk activities' heartbeats (bytes done).
type RestoreProgress struct {
	Phase      string   `json:"phase"`
	BackupID   string   `json:"backup_id"`
	DisksDone  int      `json:"disks_done"`
	Disks      int      `json:"disks"`
	BytesDone  int64    `json:"bytes_done"`
	BytesTotal int64    `json:"bytes_total"`
	Servers    []string `json:"servers,omitempty"`
	Volumes    []string `json:"volumes,omitempty"`
}

// ErrHookFailed is the failure type of a restore or clone whose
// post-restore hook or health check exited non-zero; its details are the
// []HookOutcome of the hooks run so far, the failed one last.
const ErrHookFailed = "HookFailed"

// ErrLeftovers is the failure type of a restore whose clean-up could not
// delete everything it made; the message lists what is left.
const ErrLeftovers = "RestoreLeftovers"

// RestoreWorkflowID is the workflow id of a restore started now (the CLI
// passes a random suffix).
func RestoreWorkflowID(backupID, suffix string) string { return "restore/" + backupID + "/" + suffix }

// CloneWorkflowID is the id of a clone; `raksha clone delete` takes it.
func CloneWorkflowID(name string) string { return "clone/" + name }

func restoreValidate(req RestoreRequest) error {
	switch {
	case req.Repository == "":
		return errors.New("repository id is empty")
	case req.BackupID == "":
		return errors.New("backup id is empty")
	case req.InPlace && req.Project != "":
		return errors.New("an in-place restore goes back into the captured servers: it takes no target project")
	case req.InPlace && len(req.Volumes) > 0:
		return errors.New("an in-place restore rolls back whole servers: select them with vms, not volumes")
	case req.InPlace && (len(req.PostHooks) > 0 || req.HealthCheck != nil):
		return errors.New("post-restore hooks run in new servers only, not in an in-place restore")
	}
	return nil
}

func cloudOpts(ctx workflow.Context, timeout time.Duration, attempts int32) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           activities.ControlQueue,
		StartToCloseTimeout: timeout,
		HeartbeatTimeout:    min(timeout, time.Minute),
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: 30 * time.Second,
			MaximumAttempts: attempts, NonRetryableErrorTypes: activities.NonRetryable},
	})
}

// writesWaitForCancelChange marks histories whose restores wait for their
// cancelled writes to stop.
const writesWaitForCancelChange = "writes-wait-for-cancellation"

func writeOpts(ctx workflow.Context, queue string) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              queue,
		ScheduleToStartTimeout: 5 * time.Minute,
		StartToCloseTimeout:    24 * time.Hour,
		HeartbeatTimeout:       30 * time.Second, // WriteDisk heartbeats every 200 ms; a dead worker's write resumes after this
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 2 * time.Second, BackoffCoefficient: 2, MaximumInterval: time.Minute,
			MaximumAttempts: 5, NonRetryableErrorTypes: activities.NonRetryable},
	})
}

// restoreRun is the state of one run, for clean-up and the progress query.
type restoreRun struct {
	req     RestoreRequest
	project string
	res     *RestoreResult
	prog    *RestoreProgress
	// made are the servers and volumes this run created, in order.
	servers []activities.ServerRef
	volumes []activities.VolumeRef
}

// Restore restores a backup: new volumes with the backup's data, then the
// servers recreated from the captured metadata (into the same or another
// project, networks and flavors remapped), their ephemeral disks written
// while they are stopped once; or, InPlace, the captured servers rolled back.
// Disks are written in parallel, each by the worker that reaches its target.
// On failure or cancellation everything the run made is deleted; what cannot
// be is listed in the error.
func Restore(ctx workflow.Context, req RestoreRequest) (*RestoreResult, error) {
	if req.Operation == "" {
		req.Operation = "restore"
	}
	start := workflow.Now(ctx)
	res, err := restore(ctx, req)
	recordDuration(ctx, MetricRestoreDuration, start, err, map[string]string{"operation": req.Operation, "repository": req.Repository})
	return res, err
}

// restore is Restore's run, which that times.
func restore(ctx workflow.Context, req RestoreRequest) (*RestoreResult, error) {
	isolated := workflow.GetVersion(ctx, tenantIsolationChange, workflow.DefaultVersion, 1) >= 1
	if err := restoreValidate(req); err != nil {
		return nil, temporal.NewNonRetryableApplicationError(err.Error(), activities.ErrInvalid, nil)
	}
	if isolated && (len(req.PostHooks) > 0 || req.HealthCheck != nil) && !req.Operator {
		err := fmt.Errorf("%s of backup %s: %w", req.Operation, req.BackupID, errHooksNotOperator)
		return nil, temporal.NewNonRetryableApplicationError(err.Error(), activities.ErrInvalid, nil)
	}
	start := workflow.Now(ctx)
	info := workflow.GetInfo(ctx)
	run := &restoreRun{req: req, res: &RestoreResult{RestoreID: info.WorkflowExecution.ID, BackupID: req.BackupID, InPlace: req.InPlace},
		prog: &RestoreProgress{Phase: "planning", BackupID: req.BackupID}}
	if err := workflow.SetQueryHandler(ctx, ProgressQuery, func() (*RestoreProgress, error) { return run.prog, nil }); err != nil {
		return nil, err
	}
	_ = workflow.UpsertTypedSearchAttributes(ctx, SAOperation.ValueSet(req.Operation))

	var plan activities.RestorePlan
	err := workflow.ExecuteActivity(cloudOpts(ctx, 5*time.Minute, 5), a.PlanRestore, activities.PlanRestoreInput{
		Repository: req.Repository, BackupID: req.BackupID, VMs: req.VMs, Volumes: req.Volumes}).Get(ctx, &plan)
	if err != nil {
		return nil, fmt.Errorf("plan the restore of backup %s: %w", req.BackupID, err)
	}
	run.project = req.Project
	if run.project == "" {
		run.project = plan.Project
	}
	run.res.Project = run.project
	sas := []temporal.SearchAttributeUpdate{SAProject.ValueSet(run.project)}
	if plan.Workload != "" {
		sas = append(sas, SAWorkload.ValueSet(plan.Workload))
	}
	_ = workflow.UpsertTypedSearchAttributes(ctx, sas...)
	for _, vm := range plan.VMs {
		run.prog.Disks += len(vm.Disks)
	}
	run.prog.BytesTotal = plan.Bytes

	if req.InPlace {
		err = run.inPlace(ctx, &plan)
	} else {
		err = run.fresh(ctx, &plan)
		if err == nil {
			// A create whose answer was lost and was retried left a
			// labelled stray: remove it.
			if left := run.sweep(ctx, true); len(left) > 0 {
				workflow.GetLogger(ctx).Warn("stray resources of the restore could not be deleted", "left", left)
			}
		}
	}
	run.res.Seconds = workflow.Now(ctx).Sub(start).Seconds()
	if err != nil {
		if !req.InPlace {
			run.prog.Phase = "cleaning up"
			if left := run.cleanup(ctx); len(left) > 0 {
				return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("%s of backup %s failed: %v; clean-up left: %s",
					req.Operation, req.BackupID, err, strings.Join(left, ", ")), ErrLeftovers, err, left)
			}
		}
		return nil, err
	}
	run.prog.Phase = "done"
	_ = workflow.UpsertMemo(ctx, map[string]any{"result": map[string]any{"backup_id": req.BackupID, "project": run.project,
		"servers": len(run.res.Servers), "volumes": len(run.res.Volumes), "bytes": run.res.Bytes,
		"bytes_fetched": run.res.BytesFetched, "write_seconds": run.res.WriteSeconds, "in_place": req.InPlace}})
	return run.res, nil
}

// diskJob is one disk to write: its manifest and where it goes.
type diskJob struct {
	vm   string
	disk activities.RestorePlanDisk
	// volume is the volume to connect ("" for an ephemeral disk, which
	// has target and queue set).
	volume string
	target activities.WriteTarget
	queue  string
}

// writeDisks connects every volume, writes every disk in parallel and
// disconnects the volumes again.
func (run *restoreRun) writeDisks(ctx workflow.Context, jobs []diskJob) error {
	start := workflow.Now(ctx)
	limit := run.req.MaxParallelWrites
	if limit <= 0 {
		limit = DefaultParallelWrites
	}
	var firstErr error
	// Since writesWaitForCancelChange, a cancelled restore starts no more
	// writes and waits for the running ones to stop before it disconnects
	// and deletes what it made (a volume still written to cannot be
	// deleted cleanly).
	waitCancel := workflow.GetVersion(ctx, writesWaitForCancelChange, workflow.DefaultVersion, 1) >= 1
	sel := workflow.NewSelector(ctx)
	inflight := 0
	collect := func(i int) func(workflow.Future) {
		return func(f workflow.Future) {
			inflight--
			var r activities.WriteDiskResult
			if err := f.Get(ctx, &r); err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("write disk %s: %w", jobs[i].disk.Manifest, err)
				}
				return
			}
			run.res.Disks = append(run.res.Disks, r)
			run.res.Bytes += r.Size
			run.res.BytesFetched += r.BytesFetched
			run.prog.DisksDone++
			run.prog.BytesDone += r.Size
		}
	}
	for i := range jobs {
		for inflight >= limit {
			sel.Select(ctx)
		}
		if firstErr != nil {
			break // no new writes after a failure; the running ones finish
		}
		if waitCancel && ctx.Err() != nil {
			firstErr = fmt.Errorf("write disks: %w", temporal.NewCanceledError())
			break
		}
		j := &jobs[i]
		if j.volume != "" {
			var conn cloud.Connection
			ref := activities.VolumeRef{Project: run.project, VolumeID: j.volume}
			if err := workflow.ExecuteActivity(cloudOpts(ctx, 2*time.Minute, 5), a.ConnectVolume, ref).Get(ctx, &conn); err != nil {
				firstErr = fmt.Errorf("connect volume %s for disk %s: %w", j.volume, j.disk.Manifest, err)
				break
			}
			j.target, j.queue = activities.TargetFor(&conn)
		}
		wctx := writeOpts(ctx, j.queue)
		if waitCancel {
			o := workflow.GetActivityOptions(wctx)
			o.WaitForCancellation = true
			wctx = workflow.WithActivityOptions(wctx, o)
		}
		f := workflow.ExecuteActivity(wctx, a.WriteDisk, activities.WriteDiskInput{
			Repository: run.req.Repository, Manifest: j.disk.Manifest, Target: j.target})
		inflight++
		sel.AddFuture(f, collect(i))
	}
	for inflight > 0 {
		sel.Select(ctx)
	}
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	for _, j := range jobs {
		if j.volume != "" && j.target.Kind != "" {
			_ = workflow.ExecuteActivity(cloudOpts(dctx, time.Minute, 3), a.DisconnectVolume,
				activities.VolumeRef{Project: run.project, VolumeID: j.volume}).Get(dctx, nil)
		}
	}
	run.res.WriteSeconds += workflow.Now(ctx).Sub(start).Seconds()
	return firstErr
}

// fresh restores into new volumes and servers.
func (run *restoreRun) fresh(ctx workflow.Context, plan *activities.RestorePlan) error {
	req := run.req
	run.prog.Phase = "creating volumes"
	labels := maps.Clone(req.Metadata)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[activities.MetaRestore] = run.res.RestoreID
	labels[activities.MetaBackup] = plan.BackupID

	// Volumes: create them all, then wait for them.
	type newVol struct {
		vm   int
		disk activities.RestorePlanDisk
		id   string
	}
	var vols []newVol
	for i, vm := range plan.VMs {
		for _, d := range vm.Disks {
			if d.VolumeID == "" {
				continue
			}
			meta := maps.Clone(d.Metadata)
			if meta == nil {
				meta = map[string]string{}
			}
			maps.Copy(meta, labels)
			for k, v := range meta {
				if v == "" {
					delete(meta, k)
				}
			}
			meta[activities.MetaRestoredFrom] = d.VolumeID
			name := d.VolumeName
			if name == "" {
				name = vm.Name + "-" + d.Disk
			}
			var id string
			err := workflow.ExecuteActivity(cloudOpts(ctx, 2*time.Minute, 3), a.CreateRestoreVolume, activities.CreateVolumeInput{
				Project: run.project, Name: req.NamePrefix + name, SizeGB: d.SizeGB, Type: d.VolumeType, Metadata: meta}).Get(ctx, &id)
			if err != nil {
				return fmt.Errorf("create a volume for disk %s: %w", d.Manifest, err)
			}
			run.volumes = append(run.volumes, activities.VolumeRef{Project: run.project, VolumeID: id})
			run.prog.Volumes = append(run.prog.Volumes, id)
			vols = append(vols, newVol{vm: i, disk: d, id: id})
			run.res.Volumes = append(run.res.Volumes, RestoredVolume{Manifest: d.Manifest, From: d.VolumeID, VolumeID: id})
		}
	}
	for _, v := range vols {
		if err := workflow.ExecuteActivity(cloudOpts(ctx, 15*time.Minute, 5), a.WaitRestoreVolume,
			activities.VolumeRef{Project: run.project, VolumeID: v.id}).Get(ctx, nil); err != nil {
			return fmt.Errorf("volume %s for disk %s: %w", v.id, v.disk.Manifest, err)
		}
	}

	// Data into the volumes, before any server uses them.
	run.prog.Phase = "writing volumes"
	var jobs []diskJob
	for _, v := range vols {
		jobs = append(jobs, diskJob{vm: plan.VMs[v.vm].Name, disk: v.disk, volume: v.id})
	}
	if err := run.writeDisks(ctx, jobs); err != nil {
		return err
	}
	if len(req.Volumes) > 0 {
		return nil // single volumes: no servers
	}

	// Servers, in parallel.
	run.prog.Phase = "creating servers"
	type newServer struct {
		vm activities.RestorePlanVM
		f  workflow.Future
		id string
	}
	var srvs []*newServer
	for i, vm := range plan.VMs {
		volMap := map[string]string{}
		for _, v := range vols {
			if v.vm == i {
				volMap[v.disk.VolumeID] = v.id
			}
		}
		meta := maps.Clone(labels)
		meta[activities.MetaRestoredFrom] = vm.ServerID
		var id string
		err := workflow.ExecuteActivity(cloudOpts(ctx, 2*time.Minute, 3), a.CreateRestoreServer, activities.CreateServerInput{
			Repository: req.Repository, BackupID: plan.BackupID, VM: vm.Name, Project: run.project, Volumes: volMap,
			NamePrefix: req.NamePrefix, Networks: req.Networks, Flavors: req.Flavors, KeepFixedIPs: req.KeepFixedIPs,
			Metadata: meta}).Get(ctx, &id)
		if err != nil {
			return fmt.Errorf("recreate server %s (vm %s): %w", vm.ServerName, vm.Name, err)
		}
		run.servers = append(run.servers, activities.ServerRef{Project: run.project, ServerID: id})
		run.prog.Servers = append(run.prog.Servers, id)
		srvs = append(srvs, &newServer{vm: vm, id: id})
	}
	for _, s := range srvs {
		s.f = workflow.ExecuteActivity(cloudOpts(ctx, 15*time.Minute, 5), a.WaitRestoreServer, activities.ServerRef{Project: run.project, ServerID: s.id})
	}
	var infos []activities.ServerInfo
	for _, s := range srvs {
		var si activities.ServerInfo
		if err := s.f.Get(ctx, &si); err != nil {
			return fmt.Errorf("server %s (vm %s): %w", s.id, s.vm.Name, err)
		}
		infos = append(infos, si)
		run.res.Servers = append(run.res.Servers, RestoredServer{VM: s.vm.Name, From: s.vm.ServerID, ServerID: si.ServerID,
			Name: si.Name, Host: si.Host, Instance: si.Instance})
	}

	// Root and ephemeral disks belong to the new servers (made from the
	// captured image and flavor): stop them, write, start.
	var eph []diskJob
	var stopped []activities.ServerRef
	for i, s := range srvs {
		has := false
		for _, d := range s.vm.Disks {
			if d.VolumeID != "" {
				continue
			}
			has = true
			eph = append(eph, diskJob{vm: s.vm.Name, disk: d, queue: activities.HostQueue(infos[i].Host),
				target: activities.WriteTarget{Kind: "instance-disk", Instance: infos[i].Instance, File: d.InstanceFile()}})
		}
		if has {
			stopped = append(stopped, activities.ServerRef{Project: run.project, ServerID: s.id})
		}
	}
	if len(eph) > 0 {
		run.prog.Phase = "writing ephemeral disks"
		if err := run.power(ctx, stopped, "stop"); err != nil {
			return err
		}
		if err := run.writeDisks(ctx, eph); err != nil {
			return err
		}
		if err := run.power(ctx, stopped, "start"); err != nil {
			return err
		}
	}

	// Post-restore hooks, then the health check, in every new guest.
	checks := slices.Clone(req.PostHooks)
	if req.HealthCheck != nil {
		checks = append(checks, *req.HealthCheck)
	}
	if len(checks) > 0 {
		run.prog.Phase = "post-restore hooks"
		for i, s := range srvs {
			for _, h := range checks {
				var out activities.GuestRunResult
				hctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
					TaskQueue: activities.HostQueue(infos[i].Host), ScheduleToStartTimeout: time.Minute,
					StartToCloseTimeout: max(h.Timeout, 5*time.Minute) + 3*time.Minute,
					RetryPolicy:         &temporal.RetryPolicy{MaximumAttempts: 1}, // hooks are not idempotent
				})
				err := workflow.ExecuteActivity(hctx, a.GuestRun, activities.GuestRunInput{Instance: infos[i].Instance, Hook: h, WaitAgent: 120}).Get(ctx, &out)
				if err != nil {
					return fmt.Errorf("hook %s in %s: %w", hookName(h), s.vm.Name, err)
				}
				run.res.Hooks = append(run.res.Hooks, HookOutcome{VM: s.vm.Name, Hook: hookName(h), ExitCode: out.ExitCode,
					Seconds: out.Seconds, Output: strings.TrimSpace(out.Stdout + out.Stderr)})
				if out.ExitCode != 0 {
					// The details are every hook outcome so far, the failed
					// one last (a drill records the check's output from them).
					return temporal.NewNonRetryableApplicationError(fmt.Sprintf("hook %s in %s exited %d: %s", hookName(h), s.vm.Name,
						out.ExitCode, strings.TrimSpace(out.Stderr)), ErrHookFailed, nil, run.res.Hooks)
				}
			}
		}
	}
	return nil
}

func hookName(h activities.Hook) string {
	if h.Name != "" {
		return h.Name
	}
	return h.Path
}

// power stops or starts servers in parallel.
func (run *restoreRun) power(ctx workflow.Context, refs []activities.ServerRef, action string) error {
	var fs []workflow.Future
	for _, r := range refs {
		fs = append(fs, workflow.ExecuteActivity(cloudOpts(ctx, 15*time.Minute, 5), a.PowerServer, activities.PowerInput{ServerRef: r, Action: action}))
	}
	var firstErr error
	for i, f := range fs {
		if err := f.Get(ctx, nil); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("%s server %s: %w", action, refs[i].ServerID, err)
		}
	}
	return firstErr
}

// inPlace rolls the captured servers back: stop, overwrite every disk,
// start those that were running. A failure after writing began leaves the
// servers stopped (their disks are partly written) and says so.
func (run *restoreRun) inPlace(ctx workflow.Context, plan *activities.RestorePlan) error {
	run.prog.Phase = "stopping servers"
	var refs []activities.ServerRef
	var wasActive []activities.ServerRef
	infos := map[string]activities.ServerInfo{}
	for _, vm := range plan.VMs {
		ref := activities.ServerRef{Project: run.project, ServerID: vm.ServerID}
		var si activities.ServerInfo
		if err := workflow.ExecuteActivity(cloudOpts(ctx, 2*time.Minute, 5), a.ServerInfo, ref).Get(ctx, &si); err != nil {
			return fmt.Errorf("in-place restore of %s (vm %s): %w", vm.ServerID, vm.Name, err)
		}
		infos[vm.ServerID] = si
		refs = append(refs, ref)
		if si.Status == "ACTIVE" {
			wasActive = append(wasActive, ref)
		}
	}
	if err := run.power(ctx, refs, "stop"); err != nil {
		return err
	}
	run.prog.Phase = "writing disks"
	var jobs []diskJob
	for _, vm := range plan.VMs {
		si := infos[vm.ServerID]
		run.res.Servers = append(run.res.Servers, RestoredServer{VM: vm.Name, From: vm.ServerID, ServerID: vm.ServerID, Name: si.Name,
			Host: si.Host, Instance: si.Instance})
		for _, d := range vm.Disks {
			if d.VolumeID != "" {
				jobs = append(jobs, diskJob{vm: vm.Name, disk: d, volume: d.VolumeID})
				run.res.Volumes = append(run.res.Volumes, RestoredVolume{Manifest: d.Manifest, From: d.VolumeID, VolumeID: d.VolumeID})
				continue
			}
			jobs = append(jobs, diskJob{vm: vm.Name, disk: d, queue: activities.HostQueue(si.Host),
				target: activities.WriteTarget{Kind: "instance-disk", Instance: si.Instance, File: d.InstanceFile()}})
		}
	}
	if err := run.writeDisks(ctx, jobs); err != nil {
		return fmt.Errorf("%w (the servers stay stopped: their disks are partly rolled back; run the restore again)", err)
	}
	run.prog.Phase = "starting servers"
	return run.power(ctx, wasActive, "start")
}

// cleanup deletes what the run made, servers first (their volumes detach),
// through a disconnected context so that it runs on cancellation too. It
// returns what could not be deleted.
func (run *restoreRun) cleanup(ctx workflow.Context) []string {
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	var left []string
	for _, s := range run.servers {
		if err := workflow.ExecuteActivity(cloudOpts(dctx, 10*time.Minute, 5), a.DeleteRestoreServer, s).Get(dctx, nil); err != nil {
			left = append(left, fmt.Sprintf("server %s (%v)", s.ServerID, err))
		}
	}
	for _, v := range run.volumes {
		if err := workflow.ExecuteActivity(cloudOpts(dctx, 10*time.Minute, 5), a.DeleteRestoreVolume, v).Get(dctx, nil); err != nil {
			left = append(left, fmt.Sprintf("volume %s (%v)", v.VolumeID, err))
		}
	}
	return append(left, run.sweep(dctx, false)...)
}

// sweep deletes servers and volumes labelled with this restore that the run
// does not track (made by a create whose answer was lost); with keep false
// it deletes every labelled one. It returns what could not be deleted.
func (run *restoreRun) sweep(ctx workflow.Context, keep bool) []string {
	var found activities.Resources
	err := workflow.ExecuteActivity(cloudOpts(ctx, 2*time.Minute, 5), a.FindByLabel, activities.FindByLabelInput{
		Project: run.project, Key: activities.MetaRestore, Value: run.res.RestoreID}).Get(ctx, &found)
	if err != nil {
		return []string{fmt.Sprintf("the restore's labelled resources (listing them failed: %v)", err)}
	}
	var left []string
	for _, id := range found.Servers {
		if keep && slices.ContainsFunc(run.servers, func(r activities.ServerRef) bool { return r.ServerID == id }) {
			continue
		}
		if err := workflow.ExecuteActivity(cloudOpts(ctx, 10*time.Minute, 5), a.DeleteRestoreServer,
			activities.ServerRef{Project: run.project, ServerID: id}).Get(ctx, nil); err != nil {
			left = append(left, fmt.Sprintf("server %s (%v)", id, err))
		}
	}
	for _, id := range found.Volumes {
		if keep && slices.ContainsFunc(run.volumes, func(r activities.VolumeRef) bool { return r.VolumeID == id }) {
			continue
		}
		if err := workflow.ExecuteActivity(cloudOpts(ctx, 10*time.Minute, 5), a.DeleteRestoreVolume,
			activities.VolumeRef{Project: run.project, VolumeID: id}).Get(ctx, nil); err != nil {
			left = append(left, fmt.Sprintf("volume %s (%v)", id, err))
		}
	}
	return left
}
