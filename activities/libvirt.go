package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"

	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/disk/qemu"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/repo"
)

// A host worker on a libvirt compute node (Config.Libvirt) reaches guests
// through libvirtd: their agents by libvirt's pass-through, their libvirt:
// disks by libvirt's checkpoints and pull-mode backups
// (internal/host/libvirt). One checkpoint cycle per VM and backup, as for
// qemu: disks: Checkpoint (inside the freeze window) begins the job and the
// new checkpoint; CopyDisk reads the exports; FinishCheckpoint ends the job
// (cleanup), drops the base's bitmaps after the commit (release) or the new
// ones after a failure (abort). The job is recorded in the worker's work
// directory, so that a worker that restarted finds it again.

// lvCheckpoint is one VM's libvirt backup job for one backup.
type lvCheckpoint struct {
	mu      sync.Mutex
	b       *libvirt.Backup
	targets map[string]string          // locator disk ref → target
	sources map[string]*qemu.Source    // target → open export
	modes   map[string]repo.Checkpoint // target → what its manifest records
}

// openAgent opens the guest agent of instance: through libvirt on a
// libvirt host worker, else through the instance's socket.
func (a *Activities) openAgent(ctx context.Context, instance string, opts guest.Options) (*guest.Client, error) {
	if a.cfg.Libvirt != nil {
		if instance == "" || strings.ContainsAny(instance, "/\\") {
			return nil, invalid("invalid instance name %q", instance)
		}
		return libvirt.OpenAgent(ctx, a.cfg.Libvirt, instance, libvirt.AgentOptions{LockDir: a.lockDir(), Guest: opts})
	}
	dir, err := a.instanceDir(instance)
	if err != nil {
		return nil, err
	}
	return guest.Dial(ctx, filepath.Join(dir, guest.AgentSocketName), opts)
}

func (a *Activities) lockDir() string {
	if a.cfg.LockDir != "" {
		return a.cfg.LockDir
	}
	return libvirt.DefaultLockDir
}

// libvirtWork is the work directory of a domain's backup jobs.
func (a *Activities) libvirtWork(domUUID string) string {
	return filepath.Join(a.cfg.WorkDir, "libvirt", domUUID)
}

// libvirtDisks returns the domain named by the VM's libvirt: disks and
// their refs.
func libvirtDisks(disks []Disk) (domain string, refs []string, err error) {
	for _, d := range disks {
		if d.Locator.Kind() != "libvirt" {
			continue
		}
		_, dom, ref, err := d.Locator.Libvirt()
		if err != nil {
			return "", nil, invalid("%v", err)
		}
		if domain != "" && dom != domain {
			return "", nil, invalid("disks of one VM name two domains: %s and %s", domain, dom)
		}
		domain = dom
		refs = append(refs, ref)
	}
	return domain, refs, nil
}

// checkpointLibvirt begins the libvirt backup job of a VM's libvirt: disks
// with a new checkpoint, against the checkpoint their base manifests
// recorded. Disks whose base recorded another checkpoint are read in full.
func (a *Activities) checkpointLibvirt(ctx context.Context, in CheckpointInput) (*CheckpointResult, error) {
	c := a.cfg.Libvirt
	if c == nil {
		return nil, invalid("instance %s has libvirt: disks but this host worker has no libvirt connection (--libvirt-uri)", in.Instance)
	}
	domain, _, err := libvirtDisks(in.Disks)
	if err != nil {
		return nil, err
	}
	dom, err := c.Domain(ctx, domain)
	if err != nil {
		return nil, temporal.NewNonRetryableApplicationError(err.Error(), ErrNotFound, err)
	}
	all, err := c.Disks(ctx, dom)
	if err != nil {
		return nil, err
	}
	targets := map[string]string{}
	var list []string
	baseOf := map[string]*libvirt.Checkpoint{} // target → the checkpoint its base manifest recorded
	resized := map[string]string{}             // target → why it is read in full
	var base *libvirt.Checkpoint
	for _, d := range in.Disks {
		if d.Locator.Kind() != "libvirt" {
			continue
		}
		_, _, ref, _ := d.Locator.Libvirt()
		dd, err := libvirt.ResolveDisk(all, ref)
		if err != nil {
			return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("disk %s of %s: %v", d.Name, in.Instance, err), ErrNotFound, err)
		}
		targets[ref] = dd.Target
		list = append(list, dd.Target)
		cp, baseSize := a.recordedCheckpoint(ctx, in.Repository, d.Base)
		if cp != nil {
			baseOf[dd.Target] = cp
			if base == nil {
				base = cp
			}
		}
		if cp != nil && baseSize > 0 {
			size, err := c.Capacity(ctx, dom, dd.Target)
			if err != nil {
				return nil, err
			}
			if size != baseSize {
				resized[dd.Target] = fmt.Sprintf("disk size changed from %d to %d bytes since the base backup (resized)", baseSize, size)
			}
		}
	}
	full := map[string]string{}
	for t, why := range resized {
		full[t] = why
	}
	for _, t := range list {
		switch cp := baseOf[t]; {
		case full[t] != "":
		case cp == nil && base != nil:
			full[t] = "no checkpoint recorded in the disk's base backup"
		case cp != nil && cp.Name != base.Name:
			full[t] = fmt.Sprintf("the disk's base backup recorded checkpoint %s, the VM's other disks %s", cp.Name, base.Name)
		}
	}
	b, err := libvirt.Begin(ctx, c, dom, libvirt.BeginOptions{Name: libvirt.CheckpointPrefix + in.BackupID, Disks: list,
		Base: base, Full: full, WorkDir: a.libvirtWork(libvirt.UUIDString(dom.UUID))})
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", in.Instance, err)
	}
	for _, m := range b.Modes {
		a.log.Info("libvirt disk read", "instance", in.Instance, "target", m.Target, "mode", m.Mode, "reason", m.Reason)
	}
	a.mu.Lock()
	a.lvcps[cpKey(in.BackupID, in.Instance)] = newLVCheckpoint(b, targets)
	a.mu.Unlock()
	return &CheckpointResult{Bitmap: b.Checkpoint.Name}, nil
}

func newLVCheckpoint(b *libvirt.Backup, targets map[string]string) *lvCheckpoint {
	cp := &lvCheckpoint{b: b, targets: targets, sources: map[string]*qemu.Source{}, modes: map[string]repo.Checkpoint{}}
	data, _ := json.Marshal(b.Checkpoint)
	for _, m := range b.Modes {
		cp.modes[m.Target] = repo.Checkpoint{Kind: libvirt.CheckpointKind, Name: b.Checkpoint.Name, Mode: m.Mode, Reason: m.Reason, Data: string(data)}
	}
	return cp
}

// recordedCheckpoint is the libvirt checkpoint the manifest base recorded,
// with the size of the disk it recorded, or nil (none, another kind,
// unreadable: the disk is read in full).
func (a *Activities) recordedCheckpoint(ctx context.Context, repoID, base string) (*libvirt.Checkpoint, int64) {
	if base == "" || repoID == "" {
		return nil, 0
	}
	r, err := a.repo(ctx, repoID)
	if err != nil {
		a.log.Warn("repository unreadable for the base checkpoint; full read", "repository", repoID, "err", err)
		return nil, 0
	}
	m, err := r.LoadManifest(ctx, base)
	if err != nil || m.Checkpoint == nil || m.Checkpoint.Kind != libvirt.CheckpointKind {
		return nil, 0
	}
	var cp libvirt.Checkpoint
	if err := json.Unmarshal([]byte(m.Checkpoint.Data), &cp); err != nil || libvirt.CheckRecorded(cp) != nil {
		a.log.Warn("base manifest's libvirt checkpoint unusable; full read", "manifest", base, "err", err)
		return nil, 0
	}
	return &cp, m.Size
}

// lvCheckpointFor returns a VM's libvirt job for a backup: the one this
// worker began, or the one an earlier worker recorded (after a restart).
func (a *Activities) lvCheckpointFor(ctx context.Context, backupID, instance string, disks []Disk) (*lvCheckpoint, error) {
	key := cpKey(backupID, instance)
	a.mu.Lock()
	cp := a.lvcps[key]
	a.mu.Unlock()
	if cp != nil {
		return cp, nil
	}
	c := a.cfg.Libvirt
	if c == nil {
		return nil, invalid("libvirt: disks but this host worker has no libvirt connection (--libvirt-uri)")
	}
	domain, refs, err := libvirtDisks(disks)
	if err != nil {
		return nil, err
	}
	if domain == "" {
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("no libvirt disks of %s to find the job of backup %s by", instance, backupID), ErrNoCheckpoint, nil)
	}
	dom, err := c.Domain(ctx, domain)
	if err != nil {
		return nil, temporal.NewNonRetryableApplicationError(err.Error(), ErrNoCheckpoint, err)
	}
	b, err := libvirt.Attach(ctx, c, dom, a.libvirtWork(libvirt.UUIDString(dom.UUID)))
	if err != nil || b.Checkpoint.Name != libvirt.CheckpointPrefix+backupID {
		if err == nil {
			err = fmt.Errorf("the recorded job is of checkpoint %s", b.Checkpoint.Name)
		}
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("no libvirt job of %s for backup %s: %v", instance, backupID, err), ErrNoCheckpoint, err)
	}
	all, err := c.Disks(ctx, dom)
	if err != nil {
		return nil, err
	}
	targets := map[string]string{}
	for _, ref := range refs {
		dd, err := libvirt.ResolveDisk(all, ref)
		if err != nil {
			return nil, temporal.NewNonRetryableApplicationError(err.Error(), ErrNoCheckpoint, err)
		}
		targets[ref] = dd.Target
	}
	a.log.Info("found the libvirt backup job of an earlier worker", "instance", instance, "backup", backupID)
	cp = newLVCheckpoint(b, targets)
	a.mu.Lock()
	defer a.mu.Unlock()
	if have := a.lvcps[key]; have != nil {
		return have, nil
	}
	a.lvcps[key] = cp
	return cp, nil
}

// openLibvirt returns the export of a libvirt: disk at the VM's checkpoint,
// its changed extents when it is read incrementally, and what its manifest
// records.
func (a *Activities) openLibvirt(ctx context.Context, in CopyInput) (disk.Source, []disk.Extent, bool, *repo.Checkpoint, error) {
	_, _, ref, err := in.Disk.Locator.Libvirt()
	if err != nil {
		return nil, nil, false, nil, invalid("%v", err)
	}
	cp, err := a.lvCheckpointFor(ctx, in.BackupID, in.Instance, in.VMDisks)
	if err != nil {
		return nil, nil, false, nil, err
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	target, ok := cp.targets[ref]
	if !ok {
		return nil, nil, false, nil, invalid("disk %s is not part of the libvirt job of %s", ref, in.Instance)
	}
	src := cp.sources[target]
	if src == nil {
		if src, err = cp.b.Open(ctx, target, 4); err != nil {
			return nil, nil, false, nil, err
		}
		cp.sources[target] = src
	}
	rec := cp.modes[target]
	if rec.Mode != "incremental" || in.Disk.Base == "" {
		return src, nil, false, &rec, nil
	}
	changed, err := src.Changed()
	if err != nil {
		return nil, nil, false, nil, fmt.Errorf("changed extents of %s: %w", ref, err)
	}
	return src, changed, true, &rec, nil
}

// finishLibvirt ends a VM's libvirt job (see FinishCheckpoint). Idempotent.
func (a *Activities) finishLibvirt(ctx context.Context, in FinishInput) error {
	key := cpKey(in.BackupID, in.Instance)
	cp, err := a.lvCheckpointFor(ctx, in.BackupID, in.Instance, in.Disks)
	if err != nil {
		a.log.Info("no libvirt job to finish (none was begun, or it is done)", "instance", in.Instance, "err", err)
		return nil
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var errs []error
	for t, s := range cp.sources {
		errs = append(errs, s.Close())
		delete(cp.sources, t)
	}
	errs = append(errs, cp.b.End(ctx))
	switch in.Action {
	case FinishRelease:
		if cp.b.Base != nil {
			errs = append(errs, libvirt.Release(ctx, a.cfg.Libvirt, cp.b.Domain(), *cp.b.Base))
		}
	case FinishAbort:
		errs = append(errs, libvirt.Release(ctx, a.cfg.Libvirt, cp.b.Domain(), cp.b.Checkpoint))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("finish the libvirt job of %s: %w", in.Instance, err)
	}
	if in.Action != FinishCleanup {
		if err := cp.b.Forget(); err != nil {
			return err
		}
		a.mu.Lock()
		delete(a.lvcps, key)
		a.mu.Unlock()
	}
	return nil
}

// openLibvirtDisk opens the disk file t.File of the (shut off) domain
// t.Instance as a restore target: the file its definition names.
func (a *Activities) openLibvirtDisk(ctx context.Context, t WriteTarget) (writer, error) {
	if t.Instance == "" || strings.ContainsAny(t.Instance, "/\\") {
		return nil, invalid("target %s: invalid instance name", t)
	}
	dom, err := a.cfg.Libvirt.Domain(ctx, t.Instance)
	if err != nil {
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("target %s: %v", t, err), ErrNotFound, err)
	}
	all, err := a.cfg.Libvirt.Disks(ctx, dom)
	if err != nil {
		return nil, err
	}
	d, err := libvirt.ResolveDisk(all, t.File)
	if err != nil {
		return nil, temporal.NewNonRetryableApplicationError(fmt.Sprintf("target %s: %v", t, err), ErrNotFound, err)
	}
	format := t.Format
	if format == "" {
		format = d.Format
	}
	return a.openTarget(ctx, WriteTarget{Kind: "image", Path: d.File, Format: format})
}
