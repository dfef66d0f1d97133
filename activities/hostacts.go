package activities

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/disk/qemu"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/repo"
)

func toGuestHooks(hs []Hook) []guest.Hook {
	out := make([]guest.Hook, len(hs))
	for i, h := range hs {
		out[i] = guest.Hook{Name: h.Name, Path: h.Path, Args: h.Args, Timeout: h.Timeout}
	}
	return out
}

// Freeze runs the pre-hooks and freezes the guest. The freeze handle stays in
// this worker: its guard thaws the guest at the deadline if Thaw does not
// come first. Run it with a single attempt. A guest whose agent does not
// answer is reported (NoAgent), not frozen.
func (a *Activities) Freeze(ctx context.Context, in FreezeInput) (*FreezeResult, error) {
	a.mu.Lock()
	if _, busy := a.freezes[in.Instance]; busy {
		a.mu.Unlock()
		return nil, invalid("instance %s is already frozen by this worker", in.Instance)
	}
	a.mu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := a.openAgent(dctx, in.Instance, guest.Options{Logger: a.log, Owner: "raksha freeze " + activity.GetInfo(ctx).WorkflowExecution.ID})
	if errors.Is(err, guest.ErrNotAnswering) {
		return &FreezeResult{NoAgent: true}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("freeze %s: %w", in.Instance, err)
	}
	policy := guest.HookFail
	if in.HookFailure == "continue" {
		policy = guest.HookContinue
	}
	h, err := c.Freeze(ctx, guest.FreezeOptions{Timeout: in.Timeout, PreHooks: toGuestHooks(in.PreHooks),
		PostHooks: toGuestHooks(in.PostHooks), OnHookFailure: policy})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("freeze %s: %w", in.Instance, err)
	}
	a.mu.Lock()
	a.agents[in.Instance] = c
	a.freezes[in.Instance] = h
	a.mu.Unlock()
	return &FreezeResult{FreezeSent: h.FreezeSent, Deadline: h.Deadline}, nil
}

// Thaw thaws the guest and runs the post-hooks; it reports the freeze window
// and whether the guard had thawed first. Without a freeze handle (the
// worker restarted, or the freeze failed) it thaws any freeze it finds.
func (a *Activities) Thaw(ctx context.Context, in ThawInput) (*ThawResult, error) {
	a.mu.Lock()
	h := a.freezes[in.Instance]
	c := a.agents[in.Instance]
	a.mu.Unlock()
	if h == nil {
		return a.thawOrphan(ctx, in.Instance)
	}
	rep, err := h.Thaw(ctx)
	if rep == nil {
		return nil, fmt.Errorf("thaw %s: %w", in.Instance, err)
	}
	a.mu.Lock()
	delete(a.freezes, in.Instance)
	delete(a.agents, in.Instance)
	a.mu.Unlock()
	c.Close()
	res := &ThawResult{WasFrozen: true, GuardThawed: rep.GuardThawed, Window: rep.Window}
	if err != nil { // a post-hook failed under HookFail: the guest is thawed
		return res, temporal.NewNonRetryableApplicationError(fmt.Sprintf("thaw %s: %v", in.Instance, err), "HookFailed", err)
	}
	return res, nil
}

func (a *Activities) thawOrphan(ctx context.Context, instance string) (*ThawResult, error) {
	c, err := a.openAgent(ctx, instance, guest.Options{Logger: a.log, Owner: "raksha thaw"})
	if errors.Is(err, guest.ErrNotAnswering) {
		return &ThawResult{}, nil // no agent, nothing frozen
	}
	if err != nil {
		return nil, fmt.Errorf("thaw %s: %w", instance, err)
	}
	defer c.Close()
	st, err := c.FsfreezeStatus(ctx)
	if err != nil {
		return nil, fmt.Errorf("thaw %s: %w", instance, err)
	}
	if st != guest.FreezeStatus("frozen") {
		return &ThawResult{}, nil
	}
	if _, err := c.FsfreezeThaw(ctx); err != nil {
		return nil, fmt.Errorf("thaw %s: %w", instance, err)
	}
	// The window is unknown: call it guard-thawed, never app-consistent.
	return &ThawResult{WasFrozen: true, GuardThawed: true}, nil
}

func cpKey(backupID, instance string) string { return backupID + "/" + instance }

// NewBitmapName is the bitmap of a backup's checkpoint.
func NewBitmapName(backupID string) string { return qemu.BitmapPrefix + backupID }

// Checkpoint fixes the point in time of a VM's qemu: disks in one QMP
// transaction (new persistent bitmap, previous one disabled, fleecing) and
// keeps the cycle on this worker for CopyDisk. Run it inside the freeze window.
func (a *Activities) Checkpoint(ctx context.Context, in CheckpointInput) (*CheckpointResult, error) {
	for _, d := range in.Disks {
		if d.Locator.Kind() == "libvirt" {
			return a.checkpointLibvirt(ctx, in)
		}
	}
	var drives []qemu.Drive
	for _, d := range in.Disks {
		if d.Locator.Kind() != "qemu" {
			continue
		}
		_, inst, node, err := d.Locator.QEMU()
		if err != nil {
			return nil, invalid("%v", err)
		}
		if inst != in.Instance {
			return nil, invalid("disk %s belongs to %s, not %s", d.Name, inst, in.Instance)
		}
		drives = append(drives, qemu.Drive{Node: node, Prev: d.BaseCheckpoint})
	}
	if len(drives) == 0 {
		return &CheckpointResult{}, nil
	}
	mon, err := a.monitor(ctx, in.Instance)
	if err != nil {
		return nil, err
	}
	work := filepath.Join(a.cfg.WorkDir, in.Instance)
	if err := os.MkdirAll(work, 0o700); err != nil {
		return nil, err
	}
	id := shortHash(in.BackupID)
	b, err := qemu.Prepare(ctx, mon, work, id, drives, a.log)
	if err != nil {
		a.dropMonitor(in.Instance)
		return nil, fmt.Errorf("checkpoint %s: %w", in.Instance, err)
	}
	bitmap := NewBitmapName(in.BackupID)
	if err := b.Checkpoint(ctx, bitmap); err != nil {
		b.Cleanup(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("checkpoint %s: %w", in.Instance, err)
	}
	a.mu.Lock()
	a.checkpoints[cpKey(in.BackupID, in.Instance)] = &vmCheckpoint{b: b, bitmap: bitmap, sources: map[string]*qemu.Source{}}
	a.mu.Unlock()
	return &CheckpointResult{Bitmap: bitmap}, nil
}

func shortHash(s string) string {
	var h uint32 = 2166136261
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return fmt.Sprintf("%08x", h)
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
	src, changed, known, release, err := a.openSource(ctx, in)
	if err != nil {
		return nil, err
	}
	defer release()
	ck := copyCheckpoint(in)
	if in.Disk.Locator.Kind() == "libvirt" {
		var lsrc disk.Source
		lsrc, changed, known, ck, err = a.openLibvirt(ctx, in)
		if err != nil {
			return nil, err
		}
		src = lsrc
	}
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
	return &CopyResult{Manifest: m.ID, Size: m.Size, BytesRead: m.Stats.BytesRead, BytesNew: m.Stats.BytesNew,
		BytesReused: m.Stats.BytesReused, BytesStored: m.Stats.BytesStored, Incremental: m.Base != "",
		Seconds: m.Stats.Seconds, ResumedFrom: resumedFrom}, nil
}

// openSource returns the disk as it was at the checkpoint, with its changed
// extents when the previous checkpoint can serve as a diff base.
func (a *Activities) openSource(ctx context.Context, in CopyInput) (disk.Source, []disk.Extent, bool, func(), error) {
	switch in.Disk.Locator.Kind() {
	case "qemu":
		_, inst, node, err := in.Disk.Locator.QEMU()
		if err != nil {
			return nil, nil, false, nil, invalid("%v", err)
		}
		cp, err := a.checkpointFor(ctx, in.BackupID, inst, in.VMDisks)
		if err != nil {
			return nil, nil, false, nil, err
		}
		cp.mu.Lock()
		defer cp.mu.Unlock()
		if len(cp.sources) == 0 {
			srcs, err := cp.b.Export(ctx, 4)
			if err != nil {
				return nil, nil, false, nil, err
			}
			for i, d := range cp.b.Drives() {
				cp.sources[d.Node] = srcs[i]
			}
		}
		src := cp.sources[node]
		if src == nil {
			return nil, nil, false, nil, invalid("disk node %s is not part of the checkpoint of %s", node, inst)
		}
		changed, err := src.Changed()
		known := err == nil && in.Disk.Base != ""
		if err != nil && !errors.Is(err, qemu.ErrNoBitmap) {
			return nil, nil, false, nil, err
		}
		return src, changed, known, func() {}, nil
	case "rbd":
		return a.openRBD(ctx, in)
	case "libvirt":
		return nil, nil, false, func() {}, nil // CopyDisk opens it (openLibvirt)
	default:
		return nil, nil, false, nil, invalid("disk %s: locator kind %q is not supported by this worker", in.Disk.Name, in.Disk.Locator.Kind())
	}
}

// checkpointFor returns the checkpoint cycle of a VM for a backup: the one
// this worker made, or — after a restart — the one QEMU still holds.
func (a *Activities) checkpointFor(ctx context.Context, backupID, instance string, disks []Disk) (*vmCheckpoint, error) {
	key := cpKey(backupID, instance)
	a.mu.Lock()
	cp := a.checkpoints[key]
	a.mu.Unlock()
	if cp != nil {
		return cp, nil
	}
	var drives []qemu.Drive
	for _, d := range disks {
		if d.Locator.Kind() != "qemu" {
			continue
		}
		_, _, node, err := d.Locator.QEMU()
		if err != nil {
			return nil, invalid("%v", err)
		}
		drives = append(drives, qemu.Drive{Node: node, Prev: d.BaseCheckpoint})
	}
	if len(drives) == 0 {
		return nil, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("no checkpoint of %s for backup %s on this worker, and no disks to find it by", instance, backupID), ErrNoCheckpoint, nil)
	}
	mon, err := a.monitor(ctx, instance)
	if err != nil {
		return nil, err
	}
	b, err := qemu.Attach(ctx, mon, filepath.Join(a.cfg.WorkDir, instance), shortHash(backupID), drives, NewBitmapName(backupID), a.log)
	if err != nil {
		return nil, temporal.NewNonRetryableApplicationError(err.Error(), ErrNoCheckpoint, err)
	}
	a.log.Info("found the checkpoint of an earlier worker in QEMU", "instance", instance, "backup", backupID)
	cp = &vmCheckpoint{b: b, bitmap: NewBitmapName(backupID), sources: map[string]*qemu.Source{}}
	a.mu.Lock()
	defer a.mu.Unlock()
	if have := a.checkpoints[key]; have != nil {
		return have, nil
	}
	a.checkpoints[key] = cp
	return cp, nil
}

// FinishCheckpoint ends a VM's checkpoint cycle: cleanup (exports and
// temporary nodes go), release (after the commit: older bitmaps go, one base
// remains) or abort (the backup failed: the previous bitmap absorbs the new
// one and stays the base). Idempotent.
func (a *Activities) FinishCheckpoint(ctx context.Context, in FinishInput) error {
	for _, d := range in.Disks {
		if d.Locator.Kind() == "libvirt" {
			return a.finishLibvirt(ctx, in)
		}
	}
	key := cpKey(in.BackupID, in.Instance)
	cp, cerr := a.checkpointFor(ctx, in.BackupID, in.Instance, in.Disks)
	if cerr != nil {
		a.log.Info("no checkpoint to finish (none was made, or it is gone)", "instance", in.Instance, "err", cerr)
		cp = nil
	}
	if cp != nil {
		cp.mu.Lock()
		for n, s := range cp.sources {
			s.Close()
			delete(cp.sources, n)
		}
		var err error
		if in.Action == FinishAbort {
			err = cp.b.Abort(ctx)
		}
		cerr := cp.b.Cleanup(ctx)
		cp.mu.Unlock()
		if err = errors.Join(err, cerr); err != nil {
			return fmt.Errorf("finish checkpoint of %s: %w", in.Instance, err)
		}
		if in.Action != FinishCleanup {
			a.mu.Lock()
			delete(a.checkpoints, key)
			a.mu.Unlock()
		}
	}
	if in.Action != FinishRelease {
		return nil
	}
	mon, err := a.monitor(ctx, in.Instance)
	if err != nil {
		return err
	}
	keep := NewBitmapName(in.BackupID)
	for _, d := range in.Disks {
		if d.Locator.Kind() != "qemu" {
			continue
		}
		_, _, node, err := d.Locator.QEMU()
		if err != nil {
			return invalid("%v", err)
		}
		removed, err := qemu.Release(ctx, mon, node, keep)
		if err != nil {
			return err
		}
		if len(removed) > 0 {
			a.log.Info("released older bitmaps", "instance", in.Instance, "node", node, "removed", removed)
		}
	}
	return nil
}

// copyCheckpoint is the CBT token a copy records: the VM's new bitmap for a
// qemu: disk, the backup's snapshot for an rbd: disk.
func copyCheckpoint(in CopyInput) *repo.Checkpoint {
	if in.Disk.Locator.Kind() == "rbd" {
		return &repo.Checkpoint{Kind: "rbd-snapshot", Name: RBDSnapshotName(in.BackupID)}
	}
	return &repo.Checkpoint{Kind: "qemu-bitmap", Name: in.Checkpoint}
}
