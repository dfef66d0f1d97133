package libvirt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	lv "github.com/digitalocean/go-libvirt"

	"github.com/raksha-backup/raksha/internal/disk/qemu"
	"github.com/raksha-backup/raksha/internal/freezerec"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host"
	"github.com/raksha-backup/raksha/internal/repo"
)

// DriverOptions configure a Driver.
type DriverOptions struct {
	// LockDir holds the guests' lock files (DefaultLockDir when empty).
	LockDir string
	// WorkDir holds the jobs' NBD sockets, scratch files and records
	// (<WorkDir>/libvirt/<domain uuid>).
	WorkDir string
	// Log receives the driver's logs (slog.Default when nil).
	Log *slog.Logger
	// Freezes, when set, records every freeze of the driver's agents for
	// the watchdog (package watchdog): route Libvirt, the connection's URI
	// and the domain's UUID.
	Freezes *freezerec.Dir
}

// Driver is host.Driver on a libvirt compute node (a Nova compute host):
// guests' agents through libvirt's pass-through, disks (libvirt: locators)
// through libvirt checkpoints and pull-mode backups (Begin). Raksha owns
// the chain: the base checkpoint comes from the disk's base manifest
// (host.Disk.Base, a CheckpointKind record with its XML), and no
// checkpoint metadata stays in libvirt once a call returns.
type Driver struct {
	c    *Conn
	opts DriverOptions
	log  *slog.Logger

	jobs host.Jobs[*driverJob]
}

type driverJob struct {
	mu      sync.Mutex
	b       *Backup
	targets map[string]string          // disk ref → target
	sources map[string]*qemu.Source    // target → open export
	records map[string]repo.Checkpoint // target → what its manifest records
}

var _ host.Driver = (*Driver)(nil)

// NewDriver returns the driver of the libvirt host c connects to.
func NewDriver(c *Conn, opts DriverOptions) *Driver {
	if opts.LockDir == "" {
		opts.LockDir = DefaultLockDir
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Driver{c: c, opts: opts, log: opts.Log}
}

// Kind implements host.Driver: the disks of libvirt: locators.
func (d *Driver) Kind() string { return "libvirt" }

// Conn is the driver's connection to libvirtd.
func (d *Driver) Conn() *Conn { return d.c }

// work is the work directory of a domain's backup jobs.
func (d *Driver) work(domUUID string) string {
	return filepath.Join(d.opts.WorkDir, "libvirt", domUUID)
}

func validInstance(instance string) error {
	if instance == "" || strings.ContainsAny(instance, "/\\") {
		return fmt.Errorf("%w: invalid instance name %q", host.ErrInvalid, instance)
	}
	return nil
}

// domain looks the instance up; an unknown one is host.ErrNotFound.
func (d *Driver) domain(ctx context.Context, instance string) (dom lv.Domain, err error) {
	if err := validInstance(instance); err != nil {
		return dom, err
	}
	dom, err = d.c.Domain(ctx, instance)
	if errors.Is(err, ErrNoDomain) {
		return dom, fmt.Errorf("%w: %v", host.ErrNotFound, err)
	}
	return dom, err
}

// Agent implements host.Driver: libvirt's agent pass-through, with the
// guest's lock file in LockDir.
func (d *Driver) Agent(ctx context.Context, instance string, opts guest.Options) (*guest.Client, error) {
	if err := validInstance(instance); err != nil {
		return nil, err
	}
	return OpenAgent(ctx, d.c, instance, AgentOptions{LockDir: d.opts.LockDir, Guest: opts, Freezes: d.opts.Freezes})
}

// Begin implements host.Driver with one libvirt backup job per VM (see
// Begin): the base is the checkpoint the disks' base manifests recorded
// (the first disk's; a disk whose base recorded another checkpoint, none,
// or a disk of another size is read in full, with the reason).
func (d *Driver) Begin(ctx context.Context, req host.Request) (string, error) {
	if len(req.Disks) == 0 {
		return "", nil
	}
	dom, err := d.domain(ctx, req.Instance)
	if err != nil {
		return "", err
	}
	all, err := d.c.Disks(ctx, dom)
	if err != nil {
		return "", err
	}
	targets := map[string]string{}
	var list []string
	baseOf := map[string]*Checkpoint{} // target → the checkpoint its base manifest recorded
	full := map[string]string{}        // target → why it is read in full
	var base *Checkpoint
	for _, dk := range req.Disks {
		dd, err := ResolveDisk(all, dk.Ref)
		if err != nil {
			return "", fmt.Errorf("%w: disk %s of %s: %v", host.ErrNotFound, dk.Ref, req.Instance, err)
		}
		targets[dk.Ref] = dd.Target
		list = append(list, dd.Target)
		cp := d.recorded(dk)
		if cp == nil {
			continue
		}
		baseOf[dd.Target] = cp
		if base == nil {
			base = cp
		}
		if dk.BaseSize > 0 {
			size, err := d.c.Capacity(ctx, dom, dd.Target)
			if err != nil {
				return "", err
			}
			if size != dk.BaseSize {
				full[dd.Target] = fmt.Sprintf("disk size changed from %d to %d bytes since the base backup (resized)", dk.BaseSize, size)
			}
		}
	}
	var stale []Checkpoint
	for _, t := range list {
		cp := baseOf[t]
		if cp != nil && cp.Name != base.Name && !slices.ContainsFunc(stale, func(s Checkpoint) bool { return s.Name == cp.Name }) {
			stale = append(stale, *cp)
		}
		switch {
		case full[t] != "":
		case cp == nil && base != nil:
			full[t] = "no checkpoint recorded for the disk (a new disk, or its base backup did not read it through libvirt)"
		case cp != nil && cp.Name != base.Name:
			full[t] = fmt.Sprintf("the disk's base backup recorded checkpoint %s, the VM's other disks %s", cp.Name, base.Name)
		}
	}
	b, err := Begin(ctx, d.c, dom, BeginOptions{Name: CheckpointPrefix + req.BackupID, Disks: list,
		Base: base, Full: full, Stale: stale, WorkDir: d.work(UUIDString(dom.UUID)),
		// The workflows serialize a domain's backups (the workload lock):
		// a backup job of it this worker does not know of was left by a
		// worker that died after its Begin.
		EndStaleBackupJob: !d.jobs.HasInstance(req.Instance)})
	if err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", req.Instance, err)
	}
	if b.EndedStaleJob {
		d.log.WarnContext(ctx, "ended the backup job a dead worker left on the domain", "instance", req.Instance)
	}
	for _, m := range b.Modes {
		d.log.InfoContext(ctx, "libvirt disk read", "instance", req.Instance, "target", m.Target, "mode", m.Mode, "reason", m.Reason)
	}
	d.jobs.Set(req, newDriverJob(b, targets))
	return b.Checkpoint.Name, nil
}

// recorded is the libvirt checkpoint a disk's base manifest recorded, or
// nil (none, another kind, unusable: the disk is read in full).
func (d *Driver) recorded(dk host.Disk) *Checkpoint {
	if dk.Base == nil || dk.Base.Kind != CheckpointKind {
		return nil
	}
	var cp Checkpoint
	if err := json.Unmarshal([]byte(dk.Base.Data), &cp); err != nil || CheckRecorded(cp) != nil {
		d.log.Warn("base manifest's libvirt checkpoint unusable; full read", "disk", dk.Ref, "err", err)
		return nil
	}
	return &cp
}

func newDriverJob(b *Backup, targets map[string]string) *driverJob {
	j := &driverJob{b: b, targets: targets, sources: map[string]*qemu.Source{}, records: map[string]repo.Checkpoint{}}
	data, _ := json.Marshal(b.Checkpoint)
	for _, m := range b.Modes {
		j.records[m.Target] = repo.Checkpoint{Kind: CheckpointKind, Name: b.Checkpoint.Name, Mode: m.Mode, Reason: m.Reason, Data: string(data)}
	}
	return j
}

// find returns the VM's job for the backup: the one this driver began, or
// the one an earlier worker recorded (after a restart).
func (d *Driver) find(ctx context.Context, req host.Request) (*driverJob, error) {
	if j, ok := d.jobs.Get(req); ok {
		return j, nil
	}
	dom, err := d.domain(ctx, req.Instance)
	if errors.Is(err, host.ErrNotFound) {
		return nil, fmt.Errorf("%w: %v", host.ErrNoJob, err)
	}
	if err != nil {
		return nil, err
	}
	b, err := Attach(ctx, d.c, dom, d.work(UUIDString(dom.UUID)))
	if err == nil && b.Checkpoint.Name != CheckpointPrefix+req.BackupID {
		err = fmt.Errorf("the recorded job is of checkpoint %s", b.Checkpoint.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s for backup %s: %v", host.ErrNoJob, req.Instance, req.BackupID, err)
	}
	all, err := d.c.Disks(ctx, dom)
	if err != nil {
		return nil, err
	}
	targets := map[string]string{}
	for _, dk := range req.Disks {
		dd, err := ResolveDisk(all, dk.Ref)
		if err != nil {
			return nil, fmt.Errorf("%w: %s for backup %s: %v", host.ErrNoJob, req.Instance, req.BackupID, err)
		}
		targets[dk.Ref] = dd.Target
	}
	d.log.InfoContext(ctx, "found the libvirt backup job of an earlier worker", "instance", req.Instance, "backup", req.BackupID)
	return d.jobs.Add(req, newDriverJob(b, targets)), nil
}

// Open implements host.Driver: the disk's NBD export of the job, with the
// dirty bitmap's extents when the disk is read incrementally.
func (d *Driver) Open(ctx context.Context, req host.Request, ref string) (*host.Export, error) {
	dk, err := req.Disk(ref)
	if err != nil {
		return nil, err
	}
	j, err := d.find(ctx, req)
	if err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	target, ok := j.targets[ref]
	if !ok {
		return nil, fmt.Errorf("%w: disk %s is not part of the libvirt job of %s", host.ErrInvalid, ref, req.Instance)
	}
	src := j.sources[target]
	if src == nil {
		if src, err = j.b.Open(ctx, target, 4); err != nil {
			return nil, err
		}
		j.sources[target] = src
	}
	rec := j.records[target]
	if rec.Mode != "incremental" || dk.Base == nil {
		return &host.Export{Source: src, Record: rec}, nil
	}
	changed, err := src.Changed()
	if err != nil {
		return nil, fmt.Errorf("changed extents of %s: %w", ref, err)
	}
	return &host.Export{Source: src, Changed: changed, Known: true, Record: rec}, nil
}

// End implements host.Driver. Every ending stops the job (exports closed,
// scratch files gone); Commit removes the bitmaps of the base and of any
// other checkpoint a disk's base backup recorded (the new checkpoint's
// stay and record), Abort the new ones (the bases' never stopped
// recording).
func (d *Driver) End(ctx context.Context, req host.Request, how host.Ending) error {
	j, err := d.find(ctx, req)
	if err != nil {
		d.log.InfoContext(ctx, "no libvirt job to finish (none was begun, or it is done)", "instance", req.Instance, "err", err)
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	var errs []error
	for t, s := range j.sources {
		errs = append(errs, s.Close())
		delete(j.sources, t)
	}
	errs = append(errs, j.b.End(ctx))
	switch how {
	case host.Commit:
		// The base and any other checkpoint a disk's base backup recorded
		// are no disk's base any more.
		old := j.b.Stale
		if j.b.Base != nil {
			old = append([]Checkpoint{*j.b.Base}, old...)
		}
		errs = append(errs, Release(ctx, d.c, j.b.Domain(), old...))
	case host.Abort:
		errs = append(errs, Release(ctx, d.c, j.b.Domain(), j.b.Checkpoint))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("finish the libvirt job of %s: %w", req.Instance, err)
	}
	if how != host.Cleanup {
		if err := j.b.Forget(); err != nil {
			return err
		}
		d.jobs.Delete(req)
	}
	return nil
}

// DiskFile implements host.Driver: the file the domain's definition names
// for the disk (Nova's <instances_path>/<uuid>/disk, disk.eph0, ...), and
// its format from the definition.
func (d *Driver) DiskFile(ctx context.Context, instance, file string) (string, string, error) {
	if file == "" || strings.ContainsAny(file, "/\\") || file == "." || file == ".." {
		return "", "", fmt.Errorf("%w: invalid disk file name %q", host.ErrInvalid, file)
	}
	dom, err := d.domain(ctx, instance)
	if err != nil {
		return "", "", err
	}
	all, err := d.c.Disks(ctx, dom)
	if err != nil {
		return "", "", err
	}
	dd, err := ResolveDisk(all, file)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", host.ErrNotFound, err)
	}
	if dd.File == "" {
		return "", "", fmt.Errorf("%w: disk %s of %s is not a file (%s)", host.ErrInvalid, file, instance, dd.Source())
	}
	return dd.File, dd.Format, nil
}

// ThawOrphans implements host.Driver over the running domains (only: by
// name or UUID).
func (d *Driver) ThawOrphans(ctx context.Context, only []string, opts guest.OrphanOptions) ([]guest.OrphanResult, error) {
	var filter func(name, uuid string) bool
	if len(only) > 0 {
		filter = func(name, uuid string) bool {
			for _, o := range only {
				if o == name || o == uuid {
					return true
				}
			}
			return false
		}
	}
	return ThawOrphans(ctx, d.c, d.opts.LockDir, filter, opts)
}

// Close implements host.Driver: the driver's jobs stay with libvirt (and
// their records in WorkDir); the connection is the caller's.
func (d *Driver) Close() error { return nil }
