package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend"
	"github.com/raksha-backup/raksha/internal/target"
)

// Metadata keys Raksha puts on what a restore or clone makes.
const (
	// MetaRestore names the restore (its workflow id) that made a server or
	// volume; MetaClone the clone. `raksha clone delete` finds a clone's
	// resources by it.
	MetaRestore = "raksha.restore"
	MetaClone   = "raksha.clone"
	// MetaRestoredFrom is the captured server or volume id it was restored from.
	MetaRestoredFrom = "raksha.restored_from"
	// MetaBackup is the backup it was restored from.
	MetaBackup = "raksha.backup"
)

// cloudFor returns the cloud client scoped to project (the worker's own
// client when project is its project or empty).
func (a *Activities) cloudFor(ctx context.Context, project string) (*cloud.Client, error) {
	c := a.cfg.Cloud
	if c == nil {
		if d, ok := a.cfg.Discoverer.(*CloudDiscoverer); ok {
			c = d.Client
		}
	}
	if c == nil {
		return nil, invalid("this worker has no cloud connection (not a control worker)")
	}
	if project == "" || project == c.ProjectID() || project == c.ProjectName() {
		return c, nil
	}
	a.mu.Lock()
	if pc, ok := a.projects[project]; ok {
		a.mu.Unlock()
		return pc, nil
	}
	a.mu.Unlock()
	pc, err := c.ForProject(ctx, project)
	if err != nil {
		return nil, cloudErr(err)
	}
	a.mu.Lock()
	a.projects[project] = pc
	a.mu.Unlock()
	return pc, nil
}

// cloudErr marks the cloud errors no retry can fix as non-retryable.
func cloudErr(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, cloud.ErrNotFound):
		return temporal.NewNonRetryableApplicationError(err.Error(), ErrNotFound, nil)
	case errors.Is(err, cloud.ErrUnauthorized), errors.Is(err, cloud.ErrForbidden):
		return temporal.NewNonRetryableApplicationError(err.Error(), ErrUnauthorized, nil)
	case errors.Is(err, cloud.ErrBadRequest):
		return temporal.NewNonRetryableApplicationError(err.Error(), ErrInvalid, nil)
	}
	return err
}

// heartbeatWhile heartbeats every few seconds until fn returns, for cloud
// waits that have no progress to report.
func heartbeatWhile(ctx context.Context, fn func() error) error {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				activity.RecordHeartbeat(ctx)
			}
		}
	}()
	defer close(done)
	return fn()
}

// VMNames are the names Discover gives the servers of a workload in a
// backup (safe names, made unique with the id), in order.
func VMNames(servers []cloud.ServerMeta) []string {
	names := map[string]bool{}
	out := make([]string, len(servers))
	for i, s := range servers {
		n := safeName(s.Name, s.ID)
		if names[n] {
			n = safeName(s.Name+"-"+s.ID[:min(8, len(s.ID))], s.ID)
		}
		names[n] = true
		out[i] = n
	}
	return out
}

// repoNaming is repo with what the caller works on (a backup, a disk) put
// before the message of a refusal (wrong password, unknown repository).
func (a *Activities) repoNaming(ctx context.Context, repoID, what string) (*repo.Repository, error) {
	r, err := a.repo(ctx, repoID)
	var ae *temporal.ApplicationError
	if errors.As(err, &ae) {
		return nil, temporal.NewNonRetryableApplicationError(what+": "+ae.Message(), ae.Type(), nil)
	}
	return r, err
}

// loadWorkload reads a backup record and the workload captured in it.
func (a *Activities) loadWorkload(ctx context.Context, repoID, backupID string) (*repo.Backup, *cloud.Workload, error) {
	r, err := a.repoNaming(ctx, repoID, "backup "+backupID)
	if err != nil {
		return nil, nil, err
	}
	b, err := r.LoadBackup(ctx, backupID)
	if errors.Is(err, backend.ErrNotFound) {
		return nil, nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("backup %s: not in repository %s", backupID, repoID), ErrNotFound, err)
	}
	if errors.Is(err, repo.ErrCorrupt) {
		return nil, nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("backup %s: %v", backupID, err), ErrCorrupt, err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("load backup %s: %w", backupID, err)
	}
	var w cloud.Workload
	if len(b.Source) == 0 || json.Unmarshal(b.Source, &w) != nil || len(w.Servers) == 0 {
		return nil, nil, invalid("backup %s holds no OpenStack servers (a disk-image backup? restore its disks with `raksha disk restore`)", backupID)
	}
	return b, &w, nil
}

// PlanRestore reads the backup and lists the servers and disks to restore.
// An unknown VM or volume in the selection is an error naming what the
// backup holds.
func (a *Activities) PlanRestore(ctx context.Context, in PlanRestoreInput) (*RestorePlan, error) {
	b, w, err := a.loadWorkload(ctx, in.Repository, in.BackupID)
	if err != nil {
		return nil, err
	}
	names := VMNames(w.Servers)
	plan := &RestorePlan{BackupID: b.ID, Workload: b.Labels["workload"], Project: w.ProjectID, Consistency: b.Consistency}
	wantVM := map[string]bool{}
	for _, v := range in.VMs {
		wantVM[v] = false
	}
	wantVol := map[string]bool{}
	for _, v := range in.Volumes {
		wantVol[v] = false
	}
	for i, s := range w.Servers {
		selected := len(in.VMs) == 0
		for _, key := range []string{names[i], s.Name, s.ID} {
			if _, ok := wantVM[key]; ok {
				wantVM[key], selected = true, true
			}
		}
		if !selected {
			continue
		}
		vm := RestorePlanVM{Name: names[i], ServerID: s.ID, ServerName: s.Name, Host: s.Host, Instance: s.InstanceName, Status: s.Status}
		for _, ref := range b.Disks {
			if ref.VM != names[i] {
				continue
			}
			d := RestorePlanDisk{Manifest: ref.ID, Disk: ref.Disk, Size: ref.Size, Ephemeral: -1}
			if id, ok := strings.CutPrefix(ref.Disk, "vol-"); ok {
				k := slices.IndexFunc(s.Volumes, func(v cloud.VolumeMeta) bool { return v.ID == id })
				if k < 0 {
					return nil, invalid("backup %s vm %s disk %s: no captured volume %s", b.ID, names[i], ref.Disk, id)
				}
				v := s.Volumes[k]
				d.VolumeID, d.VolumeName, d.VolumeType, d.SizeGB, d.Bootable = v.ID, v.Name, v.Type, v.SizeGB, v.Bootable
				d.Metadata = v.Metadata
			} else if ref.Disk == RootDiskName {
				if s.Image == nil {
					return nil, invalid("backup %s vm %s: a root disk, but the server was captured as booted from a volume", b.ID, names[i])
				}
				d.File = cloud.RootDiskNode
				d.SizeGB = int((ref.Size + 1<<30 - 1) >> 30)
			} else if ref.Disk == SwapDiskName {
				d.File = cloud.SwapDiskNode
				d.SizeGB = int((ref.Size + 1<<30 - 1) >> 30)
			} else if n, ok := strings.CutPrefix(ref.Disk, "disk"); ok {
				idx, err := strconv.Atoi(n)
				if err != nil || idx < 0 {
					return nil, invalid("backup %s vm %s: unknown disk %s", b.ID, names[i], ref.Disk)
				}
				d.Ephemeral = idx
				d.File = fmt.Sprintf("disk.eph%d", idx)
				d.SizeGB = int((ref.Size + 1<<30 - 1) >> 30)
			}
			if len(in.Volumes) > 0 {
				hit := false
				for _, key := range []string{d.VolumeID, d.VolumeName} {
					if _, ok := wantVol[key]; ok && key != "" {
						wantVol[key], hit = true, true
					}
				}
				if !hit {
					continue
				}
			}
			vm.Disks = append(vm.Disks, d)
			plan.Bytes += d.Size
		}
		if len(in.Volumes) > 0 && len(vm.Disks) == 0 {
			continue
		}
		plan.VMs = append(plan.VMs, vm)
	}
	var missing []string
	for k, found := range wantVM {
		if !found {
			missing = append(missing, "vm "+k)
		}
	}
	for k, found := range wantVol {
		if !found {
			missing = append(missing, "volume "+k)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		var have []string
		for i, s := range w.Servers {
			have = append(have, names[i]+" ("+s.ID+")")
		}
		return nil, invalid("backup %s has no %s; it holds the servers %s", b.ID, strings.Join(missing, ", "), strings.Join(have, ", "))
	}
	return plan, nil
}

// CreateRestoreVolume asks Cinder for an empty volume and returns its id at
// once; WaitRestoreVolume waits until it is available.
func (a *Activities) CreateRestoreVolume(ctx context.Context, in CreateVolumeInput) (string, error) {
	c, err := a.cloudFor(ctx, in.Project)
	if err != nil {
		return "", err
	}
	id, err := c.CreateVolume(ctx, cloud.VolumeOpts{Name: in.Name, SizeGB: in.SizeGB, Type: in.Type, Metadata: in.Metadata,
		Description: "restored by Raksha"})
	return id, cloudErr(err)
}

// WaitRestoreVolume waits until a volume is available (detached).
func (a *Activities) WaitRestoreVolume(ctx context.Context, in VolumeRef) error {
	c, err := a.cloudFor(ctx, in.Project)
	if err != nil {
		return err
	}
	return cloudErr(heartbeatWhile(ctx, func() error {
		_, err := c.WaitVolume(ctx, in.VolumeID, "available", 10*time.Minute)
		return err
	}))
}

// ConnectVolume returns how the volume's bytes are reached (Cinder's
// os-initialize_connection) and the task queue whose worker writes them.
func (a *Activities) ConnectVolume(ctx context.Context, in VolumeRef) (*cloud.Connection, error) {
	c, err := a.cloudFor(ctx, in.Project)
	if err != nil {
		return nil, err
	}
	conn, err := c.ConnectVolume(ctx, in.VolumeID, "raksha")
	return conn, cloudErr(err)
}

// DisconnectVolume ends the export ConnectVolume made.
func (a *Activities) DisconnectVolume(ctx context.Context, in VolumeRef) error {
	c, err := a.cloudFor(ctx, in.Project)
	if err != nil {
		return err
	}
	return cloudErr(c.DisconnectVolume(ctx, in.VolumeID, "raksha"))
}

// writer opens a restore target.
type writer interface {
	WriteAt(p []byte, off int64) (int, error)
	Size() int64
	// Sync makes every write so far durable on the target.
	Sync() error
	Close() error
}

// WriteDisk flushes the target to move its resume point on every
// resumeSyncEvery, or sooner once resumeSyncBytes more are written: a retry
// after a worker died writes again at most that much.
const (
	resumeSyncEvery = 2 * time.Second
	resumeSyncBytes = 256 << 20
)

func (a *Activities) openTarget(ctx context.Context, t WriteTarget) (writer, error) {
	switch t.Kind {
	case "image":
		if err := a.checkWritePath(t.Path); err != nil {
			return nil, err
		}
		im, err := target.OpenImage(ctx, t.Path, target.ImageOptions{Format: t.Format, Conns: 4})
		if errors.Is(err, target.ErrInUse) {
			return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("target %s: %v (stop the server using it first)", t, err), ErrInvalid, nil)
		}
		return im, err
	case "instance-disk":
		// The file the instance's disk is kept in (Nova's
		// <instances_path>/<uuid>/disk.eph0 on libvirt, as the domain's
		// definition names it; the instance directory on the socket layout).
		h, err := a.hostDriver()
		if err != nil {
			return nil, err
		}
		path, format, err := h.DiskFile(ctx, t.Instance, t.File)
		if err != nil {
			return nil, hostErr(fmt.Errorf("target %s: %w", t, err))
		}
		if t.Format != "" {
			format = t.Format
		}
		return a.openTarget(ctx, WriteTarget{Kind: "image", Path: path, Format: format})
	case "rbd":
		c, err := a.ceph(ctx)
		if err != nil {
			return nil, err
		}
		return c.OpenTarget(ctx, t.Pool, t.Image)
	}
	return nil, invalid("unknown restore target kind %q", t.Kind)
}

// WriteDisk restores a disk manifest into a target: every byte, zero ranges
// as write-zeroes, so the target's old content does not matter (a new
// volume the cloud formatted, or a volume rolled back in place). Chunks are
// fetched in parallel. A target smaller than the disk is refused before
// anything is written. A retry writes the whole disk again.
func (a *Activities) WriteDisk(ctx context.Context, in WriteDiskInput) (*WriteDiskResult, error) {
	r, err := a.repoNaming(ctx, in.Repository, "restore "+in.Manifest)
	if err != nil {
		return nil, err
	}
	m, err := r.LoadManifest(ctx, in.Manifest)
	if errors.Is(err, backend.ErrNotFound) {
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("disk %s: not in repository %s", in.Manifest, in.Repository), ErrNotFound, err)
	}
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", in.Manifest, err)
	}
	w, err := a.openTarget(ctx, in.Target)
	if err != nil {
		return nil, fmt.Errorf("restore backup %s vm %s disk %s to %s: %w", m.Backup, m.VM, m.Disk, in.Target, err)
	}
	if w.Size() < m.Size {
		w.Close()
		return nil, invalid("restore backup %s vm %s disk %s: target %s has %d bytes, the disk %d", m.Backup, m.VM, m.Disk, in.Target, w.Size(), m.Size)
	}
	// A retry of the same write (its worker died) starts where the last
	// attempt's flushed resume point says.
	var from int64
	var prev WriteDiskProgress
	if activity.HasHeartbeatDetails(ctx) && activity.GetHeartbeatDetails(ctx, &prev) == nil &&
		prev.Manifest == in.Manifest && prev.Total == m.Size && prev.Resume > 0 && prev.Resume <= m.Size {
		from = prev.Resume
		a.logger(ctx).Info("restore resumes where the last attempt stopped", "manifest", in.Manifest, "target", in.Target.String(), "from", from, "attempt", activity.GetInfo(ctx).Attempt)
	}
	resume, lastSync := from, time.Now()
	st, err := r.RestoreDisk(ctx, in.Manifest, w, repo.RestoreOptions{ZeroHoles: true, From: from, Progress: func(p repo.Progress) {
		if p.Resume > resume && (time.Since(lastSync) >= resumeSyncEvery || p.Resume-resume >= resumeSyncBytes) {
			if err := w.Sync(); err == nil {
				resume, lastSync = p.Resume, time.Now()
			} else {
				a.logger(ctx).Warn("restore: sync of the target failed; the resume point stays", "target", in.Target.String(), "err", err)
			}
		}
		activity.RecordHeartbeat(ctx, WriteDiskProgress{Done: p.Done, Total: p.Total, Manifest: in.Manifest, Resume: resume})
	}})
	if cerr := w.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("restore backup %s vm %s disk %s: %w", m.Backup, m.VM, m.Disk, cerr)
	}
	if err != nil {
		if errors.Is(err, repo.ErrCorrupt) || errors.Is(err, backend.ErrNotFound) {
			return nil, temporal.NewNonRetryableApplicationError(err.Error(), ErrCorrupt, nil)
		}
		return nil, err
	}
	a.cfg.Metrics.Restored(in.Repository, m.Size)
	a.logger(ctx).Info("disk restored", "manifest", in.Manifest, "target", in.Target.String(), "bytes", m.Size, "fetched", st.BytesFetched, "seconds", st.Seconds)
	return &WriteDiskResult{Manifest: in.Manifest, Size: m.Size, BytesFetched: st.BytesFetched, BytesWritten: st.BytesWritten,
		Chunks: st.Chunks, Holes: st.Holes, Seconds: st.Seconds, ResumedFrom: from}, nil
}

// CreateRestoreServer recreates one server of a backup from the metadata
// captured in it and returns the new server's id at once (WaitRestoreServer
// waits for it to run).
func (a *Activities) CreateRestoreServer(ctx context.Context, in CreateServerInput) (string, error) {
	_, w, err := a.loadWorkload(ctx, in.Repository, in.BackupID)
	if err != nil {
		return "", err
	}
	k := slices.Index(VMNames(w.Servers), in.VM)
	if k < 0 {
		return "", invalid("backup %s has no vm %s", in.BackupID, in.VM)
	}
	m := w.Servers[k]
	m.Metadata = maps.Clone(m.Metadata)
	if m.Metadata == nil {
		m.Metadata = map[string]string{}
	}
	for key, v := range in.Metadata {
		if v == "" {
			delete(m.Metadata, key)
		} else {
			m.Metadata[key] = v
		}
	}
	c, err := a.cloudFor(ctx, in.Project)
	if err != nil {
		return "", err
	}
	id, err := c.CreateServer(ctx, &m, in.Volumes, cloud.Remap{Networks: in.Networks, Flavors: in.Flavors,
		NamePrefix: in.NamePrefix, KeepFixedIPs: in.KeepFixedIPs})
	return id, cloudErr(err)
}

// WaitRestoreServer waits until the server is ACTIVE and says where it runs
// (host and instance name: the admin view).
func (a *Activities) WaitRestoreServer(ctx context.Context, in ServerRef) (*ServerInfo, error) {
	c, err := a.cloudFor(ctx, in.Project)
	if err != nil {
		return nil, err
	}
	if err := heartbeatWhile(ctx, func() error { return c.WaitServer(ctx, in.ServerID, "ACTIVE", 10*time.Minute) }); err != nil {
		return nil, cloudErr(err)
	}
	return a.ServerInfo(ctx, in)
}

// ServerInfo shows a server's status and where it runs.
func (a *Activities) ServerInfo(ctx context.Context, in ServerRef) (*ServerInfo, error) {
	c, err := a.cloudFor(ctx, in.Project)
	if err != nil {
		return nil, err
	}
	s, err := c.GetServer(ctx, in.ServerID)
	if err != nil {
		return nil, cloudErr(err)
	}
	return &ServerInfo{ServerID: s.ID, Name: s.Name, Status: s.Status, Host: s.Host, Instance: s.InstanceName}, nil
}

// PowerServer stops or starts a server and waits for SHUTOFF or ACTIVE. A
// server already there is no error.
func (a *Activities) PowerServer(ctx context.Context, in PowerInput) error {
	c, err := a.cloudFor(ctx, in.Project)
	if err != nil {
		return err
	}
	want, call := "SHUTOFF", c.StopServer
	if in.Action == "start" {
		want, call = "ACTIVE", c.StartServer
	} else if in.Action != "stop" {
		return invalid("power action %q (want stop or start)", in.Action)
	}
	s, err := c.GetServer(ctx, in.ServerID)
	if err != nil {
		return cloudErr(err)
	}
	if s.Status != want {
		if err := call(ctx, in.ServerID); err != nil && !errors.Is(err, cloud.ErrConflict) {
			return cloudErr(err)
		}
	}
	return cloudErr(heartbeatWhile(ctx, func() error { return c.WaitServer(ctx, in.ServerID, want, 10*time.Minute) }))
}

// DeleteRestoreServer deletes a server and waits until it is gone (its
// volumes are then detached). A server already gone is no error.
func (a *Activities) DeleteRestoreServer(ctx context.Context, in ServerRef) error {
	c, err := a.cloudFor(ctx, in.Project)
	if err != nil {
		return err
	}
	if err := c.DeleteServer(ctx, in.ServerID); err != nil {
		return cloudErr(err)
	}
	return cloudErr(heartbeatWhile(ctx, func() error { return c.WaitServerGone(ctx, in.ServerID, 10*time.Minute) }))
}

// DeleteRestoreVolume deletes a volume once it is detached and waits until
// it is gone. A volume already gone is no error.
func (a *Activities) DeleteRestoreVolume(ctx context.Context, in VolumeRef) error {
	c, err := a.cloudFor(ctx, in.Project)
	if err != nil {
		return err
	}
	return cloudErr(heartbeatWhile(ctx, func() error { return c.RemoveVolume(ctx, in.VolumeID, 10*time.Minute) }))
}

// FindByLabel lists a project's servers and volumes with a metadata label.
func (a *Activities) FindByLabel(ctx context.Context, in FindByLabelInput) (*Resources, error) {
	c, err := a.cloudFor(ctx, in.Project)
	if err != nil {
		return nil, err
	}
	s, v, err := c.FindByMetadata(ctx, in.Key, in.Value)
	if err != nil {
		return nil, cloudErr(err)
	}
	return &Resources{Servers: s, Volumes: v}, nil
}

// GuestRun runs a command in a guest through its agent and waits for it
// (on the guest's host queue). A non-zero exit is reported, not an error.
func (a *Activities) GuestRun(ctx context.Context, in GuestRunInput) (*GuestRunResult, error) {
	var err error
	wait := time.Duration(max(in.WaitAgent, 15)) * time.Second
	dctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var c *guest.Client
	for {
		c, err = a.openAgent(dctx, in.Instance, guest.Options{Logger: a.logger(ctx), Owner: "raksha guest-run " + activity.GetInfo(ctx).WorkflowExecution.ID})
		var ae *temporal.ApplicationError
		if err == nil || dctx.Err() != nil || (errors.As(err, &ae) && ae.NonRetryable()) {
			break
		}
		select {
		case <-dctx.Done():
		case <-time.After(time.Second):
		}
	}
	if err != nil {
		return nil, fmt.Errorf("guest %s: agent: %w", in.Instance, err)
	}
	defer c.Close()
	timeout := in.Hook.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	rctx, rcancel := context.WithTimeout(ctx, timeout)
	defer rcancel()
	res, err := c.Run(rctx, guest.ExecRequest{Path: in.Hook.Path, Args: in.Hook.Args, Capture: true})
	if err != nil {
		return nil, fmt.Errorf("guest %s: run %s: %w", in.Instance, in.Hook.Path, err)
	}
	// The result lands in the workflow's history: a bounded, redacted tail.
	return &GuestRunResult{ExitCode: res.ExitCode, Stdout: guest.Tail(res.Stdout, guest.OutputTailSize),
		Stderr: guest.Tail(res.Stderr, guest.OutputTailSize), Seconds: res.Duration.Seconds()}, nil
}
