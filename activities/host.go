package activities

import (
	"context"
	"errors"
	"fmt"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host"
	"github.com/raksha-backup/raksha/internal/repo"
)

// A host worker reaches its guests through one host.Driver (Config.Host):
// the socket layout of the lab (qemu: disks) or libvirtd on a Nova compute
// node (libvirt: disks). One checkpoint cycle per VM and backup: Checkpoint
// (inside the freeze window) begins the job and the new checkpoint,
// CopyDisk reads the job's exports, FinishCheckpoint ends it (cleanup),
// makes the new checkpoint the base after the commit (release) or drops it
// after a failure (abort). The driver finds a job again after the worker
// restarts, so a retried CopyDisk on a new worker resumes.

// hostDriver is the worker's host driver, or a non-retryable error on a
// worker that is not a host worker.
func (a *Activities) hostDriver() (host.Driver, error) {
	if a.cfg.Host == nil {
		return nil, invalid("this worker reaches no compute host (run it with --host-dir or --libvirt-uri)")
	}
	return a.cfg.Host, nil
}

// hostErr makes the driver's errors about the request non-retryable.
func hostErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, host.ErrInvalid):
		return temporal.NewNonRetryableApplicationError(err.Error(), ErrInvalid, err)
	case errors.Is(err, host.ErrNotFound):
		return temporal.NewNonRetryableApplicationError(err.Error(), ErrNotFound, err)
	case errors.Is(err, host.ErrNoJob):
		return temporal.NewNonRetryableApplicationError(err.Error(), ErrNoCheckpoint, err)
	}
	return err
}

// openAgent opens the guest agent of instance through the host driver.
func (a *Activities) openAgent(ctx context.Context, instance string, opts guest.Options) (*guest.Client, error) {
	h, err := a.hostDriver()
	if err != nil {
		return nil, err
	}
	c, err := h.Agent(ctx, instance, opts)
	if errors.Is(err, host.ErrInvalid) {
		return nil, hostErr(err)
	}
	return c, err
}

// hostRequest is the driver's request for the VM's disks of the driver's
// kind: the instance as the locators name it (the instance name on the
// socket layout, the domain on libvirt) and each disk's base. base loads a
// disk's base checkpoint and size; nil takes the checkpoint name the
// workflow carries (enough to find and end a job).
func (a *Activities) hostRequest(h host.Driver, backupID, instance string, disks []Disk, base func(Disk) (*repo.Checkpoint, int64)) (host.Request, error) {
	req := host.Request{Instance: instance, BackupID: backupID}
	domain := ""
	for _, d := range disks {
		kind := d.Locator.Kind()
		if kind != h.Kind() {
			if kind == "qemu" || kind == "libvirt" {
				return req, invalid("disk %s has a %s: locator, but this host worker reaches %s: disks", d.Name, kind, h.Kind())
			}
			continue // rbd: disks are read by data workers
		}
		owner, ref, err := hostRef(d)
		if err != nil {
			return req, err
		}
		hd := host.Disk{Ref: ref}
		switch {
		case kind == "qemu" && owner != instance:
			return req, invalid("disk %s belongs to %s, not %s", d.Name, owner, instance)
		case kind == "libvirt" && domain != "" && owner != domain:
			return req, invalid("disks of one VM name two domains: %s and %s", domain, owner)
		case kind == "libvirt":
			domain = owner
		}
		switch {
		case base != nil:
			hd.Base, hd.BaseSize = base(d)
		case d.BaseCheckpoint != "":
			hd.Base = &repo.Checkpoint{Name: d.BaseCheckpoint}
		}
		req.Disks = append(req.Disks, hd)
	}
	if domain != "" {
		req.Instance = domain
	}
	return req, nil
}

// hostRef is a host-local disk's owner as its locator names it (the
// instance on the socket layout, the domain on libvirt) and its ref on the
// host (host.Disk.Ref).
func hostRef(d Disk) (owner, ref string, err error) {
	switch d.Locator.Kind() {
	case "qemu":
		_, owner, ref, err = d.Locator.QEMU()
	case "libvirt":
		_, owner, ref, err = d.Locator.Libvirt()
	default:
		return "", "", invalid("disk %s: locator kind %q is not a host's", d.Name, d.Locator.Kind())
	}
	if err != nil {
		return "", "", invalid("%v", err)
	}
	return owner, ref, nil
}

// baseLoader returns the loader of the disks' base checkpoints from their
// base manifests in repository repoID; without a repository (histories
// from before it was passed), the checkpoint name the workflow carries.
func (a *Activities) baseLoader(ctx context.Context, repoID string) func(Disk) (*repo.Checkpoint, int64) {
	return func(d Disk) (*repo.Checkpoint, int64) {
		if d.Base == "" {
			return nil, 0
		}
		if repoID == "" {
			if d.BaseCheckpoint == "" {
				return nil, 0
			}
			return &repo.Checkpoint{Name: d.BaseCheckpoint}, 0
		}
		r, err := a.repo(ctx, repoID)
		if err != nil {
			a.logger(ctx).Warn("repository unreadable for the base checkpoint; full read", "repository", repoID, "err", err)
			return nil, 0
		}
		m, err := r.LoadManifest(ctx, d.Base)
		if err != nil || m.Checkpoint == nil {
			a.logger(ctx).Warn("base manifest without a usable checkpoint; full read", "manifest", d.Base, "err", err)
			return nil, 0
		}
		cp := *m.Checkpoint
		return &cp, m.Size
	}
}

// Checkpoint fixes the point in time of a VM's host disks (one job per VM:
// a new bitmap or libvirt checkpoint, and an export per disk) and keeps it
// for CopyDisk. Run it inside the freeze window.
func (a *Activities) Checkpoint(ctx context.Context, in CheckpointInput) (*CheckpointResult, error) {
	local := false
	for _, d := range in.Disks {
		local = local || d.Locator.HostLocal()
	}
	if !local {
		return &CheckpointResult{}, nil
	}
	h, err := a.hostDriver()
	if err != nil {
		return nil, err
	}
	req, err := a.hostRequest(h, in.BackupID, in.Instance, in.Disks, a.baseLoader(ctx, in.Repository))
	if err != nil {
		return nil, err
	}
	name, err := h.Begin(ctx, req)
	if err != nil {
		return nil, hostErr(err)
	}
	return &CheckpointResult{Bitmap: name}, nil
}

// CopyDisk copies one disk into the backup, heartbeating its progress and
// saving its position in the repository, so that a retry resumes.
func (a *Activities) CopyDisk(ctx context.Context, in CopyInput) (*CopyResult, error) {
	r, err := a.repo(ctx, in.Repository)
	if err != nil {
		return nil, err
	}
	s, err := r.JoinBackup(ctx, in.BackupID)
	if err != nil {
		return nil, fmt.Errorf("copy %s/%s: %w", in.VM, in.Disk.Name, err)
	}
	src, changed, known, ck, release, err := a.openSource(ctx, in)
	if err != nil {
		return nil, err
	}
	defer release()
	var last CopyProgress
	var resumedFrom int64
	m, err := s.BackupDisk(ctx, in.VM, in.Disk.Name, src, repo.DiskOptions{
		Name: string(in.Disk.Locator), Base: in.Disk.Base, Changed: changed, ChangedKnown: known,
		Checkpoint: ck,
		Resumable:  true,
		Progress: func(p repo.Progress) {
			last.Done, last.Total, last.BytesRead, last.BytesNew = p.Done, p.Total, p.BytesRead, p.BytesNew
			activity.RecordHeartbeat(ctx, last)
		},
		OnCheckpoint: func(done int64) { last.Resume = done; activity.RecordHeartbeat(ctx, last) },
		OnResume:     func(from int64) { resumedFrom = from },
	})
	if err != nil {
		if errors.Is(err, repo.ErrCorrupt) {
			return nil, temporal.NewNonRetryableApplicationError(err.Error(), ErrCorrupt, err)
		}
		return nil, fmt.Errorf("copy %s/%s: %w", in.VM, in.Disk.Name, err)
	}
	a.cfg.Metrics.Copied(in.Repository, m.Stats.BytesRead, m.Stats.BytesNew, m.Stats.BytesReused, m.Stats.BytesStored)
	return &CopyResult{Manifest: m.ID, Size: m.Size, BytesRead: m.Stats.BytesRead, BytesNew: m.Stats.BytesNew,
		BytesReused: m.Stats.BytesReused, BytesStored: m.Stats.BytesStored, Incremental: m.Base != "",
		Seconds: m.Stats.Seconds, ResumedFrom: resumedFrom}, nil
}

// openSource returns the disk as it was at the checkpoint, its changed
// extents when they are known, and the checkpoint its manifest records.
func (a *Activities) openSource(ctx context.Context, in CopyInput) (disk.Source, []disk.Extent, bool, *repo.Checkpoint, func(), error) {
	switch kind := in.Disk.Locator.Kind(); kind {
	case "rbd":
		src, changed, known, release, err := a.openRBD(ctx, in)
		return src, changed, known, &repo.Checkpoint{Kind: "rbd-snapshot", Name: RBDSnapshotName(in.BackupID)}, release, err
	case "qemu", "libvirt":
		h, err := a.hostDriver()
		if err != nil {
			return nil, nil, false, nil, nil, err
		}
		if kind != h.Kind() {
			return nil, nil, false, nil, nil, invalid("disk %s has a %s: locator, but this host worker reaches %s: disks", in.Disk.Name, kind, h.Kind())
		}
		req, err := a.hostRequest(h, in.BackupID, in.Instance, in.VMDisks, nil)
		if err != nil {
			return nil, nil, false, nil, nil, err
		}
		_, ref, err := hostRef(in.Disk)
		if err != nil {
			return nil, nil, false, nil, nil, err
		}
		exp, err := h.Open(ctx, req, ref)
		if err != nil {
			return nil, nil, false, nil, nil, hostErr(err)
		}
		known := exp.Known && in.Disk.Base != ""
		changed := exp.Changed
		if !known {
			changed = nil
		}
		return exp.Source, changed, known, &exp.Record, func() {}, nil
	default:
		return nil, nil, false, nil, nil, invalid("disk %s: locator kind %q is not supported by this worker", in.Disk.Name, kind)
	}
}

// FinishCheckpoint ends a VM's checkpoint cycle: cleanup (the exports and
// the job go), release (after the commit: the new checkpoint becomes the
// disks' only base) or abort (the backup failed: the new checkpoint goes,
// the previous base stays usable). Idempotent.
func (a *Activities) FinishCheckpoint(ctx context.Context, in FinishInput) error {
	local := false
	for _, d := range in.Disks {
		local = local || d.Locator.HostLocal()
	}
	if !local {
		return nil
	}
	h, err := a.hostDriver()
	if err != nil {
		return err
	}
	req, err := a.hostRequest(h, in.BackupID, in.Instance, in.Disks, nil)
	if err != nil {
		return err
	}
	how := host.Cleanup
	switch in.Action {
	case FinishRelease:
		how = host.Commit
	case FinishAbort:
		how = host.Abort
	}
	return hostErr(h.End(ctx, req, how))
}
