// Package socket is the host driver of the lab's socket layout: every
// guest has an instance directory <host dir>/instances/<instance name>
// holding its QMP monitor socket (qmp.sock, reserved for Raksha) and its
// agent socket (qga.sock), and its disk files (disk.eph0, ...). Changed
// blocks come from QEMU's persistent dirty bitmaps (see DESIGN.md,
// "Checkpoints of qemu: disks"): Begin makes the new bitmap and a fleecing
// node per disk in one QMP transaction, exported over NBD.
package socket

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/raksha-backup/raksha/internal/disk/qemu"
	"github.com/raksha-backup/raksha/internal/freezerec"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host"
	"github.com/raksha-backup/raksha/internal/repo"
)

// CheckpointKind is the kind of checkpoint a socket-layout disk's manifest
// records: a QEMU persistent dirty bitmap.
const CheckpointKind = "qemu-bitmap"

// Options configure a Driver.
type Options struct {
	// HostDir is the host's directory (HostDir/instances/NAME/...).
	HostDir string
	// WorkDir holds the fleecing images and NBD sockets of the jobs.
	WorkDir string
	// Log receives the driver's logs (slog.Default when nil).
	Log *slog.Logger
	// Freezes, when set, records every freeze of the driver's agents for
	// the watchdog (package watchdog): route Socket, the agent socket.
	Freezes *freezerec.Dir
}

// Driver is host.Driver on the socket layout.
type Driver struct {
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	monitors map[string]*qemu.Monitor // instance → QMP
	jobs     host.Jobs[*job]
}

type job struct {
	mu      sync.Mutex
	b       *qemu.Backup
	bitmap  string
	sources map[string]*qemu.Source // node → export
}

var _ host.Driver = (*Driver)(nil)

// New returns the driver of the socket layout under opts.HostDir.
func New(opts Options) *Driver {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Driver{opts: opts, log: opts.Log, monitors: map[string]*qemu.Monitor{}}
}

// Kind implements host.Driver: the disks of qemu: locators.
func (d *Driver) Kind() string { return "qemu" }

// BitmapName is the bitmap of a backup's checkpoint.
func BitmapName(backupID string) string { return qemu.BitmapPrefix + backupID }

// InstanceDir returns the directory of an instance, refusing names that
// are not one path element.
func (d *Driver) InstanceDir(instance string) (string, error) {
	if d.opts.HostDir == "" {
		return "", fmt.Errorf("%w: this worker has no host directory (not a host worker)", host.ErrInvalid)
	}
	if instance == "" || strings.ContainsAny(instance, "/\\") || instance == "." || instance == ".." {
		return "", fmt.Errorf("%w: invalid instance name %q", host.ErrInvalid, instance)
	}
	return filepath.Join(d.opts.HostDir, "instances", instance), nil
}

// Agent implements host.Driver: the guest's agent socket.
func (d *Driver) Agent(ctx context.Context, instance string, opts guest.Options) (*guest.Client, error) {
	dir, err := d.InstanceDir(instance)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, guest.AgentSocketName)
	if d.opts.Freezes != nil && opts.Journal == nil {
		j, err := d.opts.Freezes.Journal(freezerec.Route{Kind: freezerec.Socket, Instance: instance, Socket: sock})
		if err != nil {
			return nil, err
		}
		opts.Journal = j
	}
	return guest.Dial(ctx, sock, opts)
}

// monitor returns the QMP connection of an instance, dialing it once.
func (d *Driver) monitor(ctx context.Context, instance string) (*qemu.Monitor, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if m, ok := d.monitors[instance]; ok {
		return m, nil
	}
	dir, err := d.InstanceDir(instance)
	if err != nil {
		return nil, err
	}
	m, err := qemu.DialMonitor(ctx, filepath.Join(dir, "qmp.sock"))
	if err != nil {
		return nil, err
	}
	d.monitors[instance] = m
	return m, nil
}

// dropMonitor forgets a broken QMP connection.
func (d *Driver) dropMonitor(instance string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if m, ok := d.monitors[instance]; ok {
		m.Close()
		delete(d.monitors, instance)
	}
}

// shortHash names a backup's temporary nodes and exports (QEMU limits
// node names to 31 characters).
func shortHash(s string) string {
	var h uint32 = 2166136261
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return fmt.Sprintf("%08x", h)
}

// drives are the QMP drives of the request: each disk's node, with its
// base's bitmap as the previous one.
func drives(req host.Request) []qemu.Drive {
	var out []qemu.Drive
	for _, dk := range req.Disks {
		dr := qemu.Drive{Node: dk.Ref}
		if dk.Base != nil && (dk.Base.Kind == CheckpointKind || dk.Base.Kind == "") {
			dr.Prev = dk.Base.Name
		}
		out = append(out, dr)
	}
	return out
}

// Begin implements host.Driver: one QMP transaction (new persistent bitmap
// named after the backup, the previous one disabled, a fleecing node per
// disk). Run it inside the freeze window.
func (d *Driver) Begin(ctx context.Context, req host.Request) (string, error) {
	if len(req.Disks) == 0 {
		return "", nil
	}
	mon, err := d.monitor(ctx, req.Instance)
	if err != nil {
		return "", err
	}
	work := filepath.Join(d.opts.WorkDir, req.Instance)
	if err := os.MkdirAll(work, 0o700); err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", req.Instance, err)
	}
	b, err := qemu.Prepare(ctx, mon, work, shortHash(req.BackupID), drives(req), d.log)
	if err != nil {
		d.dropMonitor(req.Instance)
		return "", fmt.Errorf("checkpoint %s: %w", req.Instance, err)
	}
	bitmap := BitmapName(req.BackupID)
	if err := b.Checkpoint(ctx, bitmap); err != nil {
		b.Cleanup(context.WithoutCancel(ctx))
		return "", fmt.Errorf("checkpoint %s: %w", req.Instance, err)
	}
	d.jobs.Set(req, &job{b: b, bitmap: bitmap, sources: map[string]*qemu.Source{}})
	return bitmap, nil
}

// find returns the VM's job for the backup: the one this driver began, or
// — after a worker restart — the one QEMU still holds.
func (d *Driver) find(ctx context.Context, req host.Request) (*job, error) {
	if j, ok := d.jobs.Get(req); ok {
		return j, nil
	}
	if len(req.Disks) == 0 {
		return nil, fmt.Errorf("%w: %s for backup %s (no disks to find it by)", host.ErrNoJob, req.Instance, req.BackupID)
	}
	mon, err := d.monitor(ctx, req.Instance)
	if err != nil {
		return nil, err
	}
	b, err := qemu.Attach(ctx, mon, filepath.Join(d.opts.WorkDir, req.Instance), shortHash(req.BackupID), drives(req), BitmapName(req.BackupID), d.log)
	if err != nil {
		return nil, fmt.Errorf("%w: %s for backup %s: %v", host.ErrNoJob, req.Instance, req.BackupID, err)
	}
	d.log.InfoContext(ctx, "found the checkpoint of an earlier worker in QEMU", "instance", req.Instance, "backup", req.BackupID)
	return d.jobs.Add(req, &job{b: b, bitmap: BitmapName(req.BackupID), sources: map[string]*qemu.Source{}}), nil
}

// Open implements host.Driver: the fleecing export of the disk's node; its
// changed extents are the previous bitmap's when it was usable.
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
	if len(j.sources) == 0 {
		srcs, err := j.b.Export(ctx, 4)
		if err != nil {
			return nil, err
		}
		for i, dr := range j.b.Drives() {
			j.sources[dr.Node] = srcs[i]
		}
	}
	src := j.sources[ref]
	if src == nil {
		return nil, fmt.Errorf("%w: disk node %s is not part of the checkpoint of %s", host.ErrInvalid, ref, req.Instance)
	}
	rec := repo.Checkpoint{Kind: CheckpointKind, Name: j.bitmap, Mode: "full"}
	changed, err := src.Changed()
	switch {
	case err == nil && dk.Base != nil:
		rec.Mode = "incremental"
		return &host.Export{Source: src, Changed: changed, Known: true, Record: rec}, nil
	case err != nil && !errors.Is(err, qemu.ErrNoBitmap):
		return nil, fmt.Errorf("changed extents of %s: %w", ref, err)
	case dk.Base == nil:
		rec.Reason = "no base checkpoint (first backup)"
	default:
		rec.Reason = fmt.Sprintf("base bitmap %s is not usable on this disk", dk.Base.Name)
	}
	return &host.Export{Source: src, Record: rec}, nil
}

// End implements host.Driver. Cleanup closes the exports and removes the
// fleecing nodes; Commit also removes every older Raksha bitmap of the
// disks, keeping the new one as their base; Abort merges the new bitmap
// back into the previous one, which records again and stays the base.
func (d *Driver) End(ctx context.Context, req host.Request, how host.Ending) error {
	j, ferr := d.find(ctx, req)
	if ferr != nil {
		d.log.InfoContext(ctx, "no checkpoint to finish (none was made, or it is gone)", "instance", req.Instance, "err", ferr)
		j = nil
	}
	if j != nil {
		j.mu.Lock()
		for n, s := range j.sources {
			s.Close()
			delete(j.sources, n)
		}
		var err error
		if how == host.Abort {
			err = j.b.Abort(ctx)
		}
		cerr := j.b.Cleanup(ctx)
		j.mu.Unlock()
		if err = errors.Join(err, cerr); err != nil {
			return fmt.Errorf("finish checkpoint of %s: %w", req.Instance, err)
		}
		if how != host.Cleanup {
			d.jobs.Delete(req)
		}
	}
	if how != host.Commit {
		return nil
	}
	mon, err := d.monitor(ctx, req.Instance)
	if err != nil {
		return err
	}
	keep := BitmapName(req.BackupID)
	for _, dk := range req.Disks {
		removed, err := qemu.Release(ctx, mon, dk.Ref, keep)
		if err != nil {
			return err
		}
		if len(removed) > 0 {
			d.log.InfoContext(ctx, "released older bitmaps", "instance", req.Instance, "node", dk.Ref, "removed", removed)
		}
	}
	return nil
}

// DiskFile implements host.Driver: the file in the instance directory.
func (d *Driver) DiskFile(ctx context.Context, instance, file string) (string, string, error) {
	if file == "" || strings.ContainsAny(file, "/\\") || file == "." || file == ".." {
		return "", "", fmt.Errorf("%w: invalid disk file name %q", host.ErrInvalid, file)
	}
	dir, err := d.InstanceDir(instance)
	if err != nil {
		return "", "", err
	}
	return filepath.Join(dir, file), "", nil
}

// ThawOrphans implements host.Driver over the agent sockets of the
// instance directories.
func (d *Driver) ThawOrphans(ctx context.Context, only []string, opts guest.OrphanOptions) ([]guest.OrphanResult, error) {
	if len(only) == 0 {
		return guest.ThawOrphans(ctx, d.opts.HostDir, opts)
	}
	var guests []guest.OrphanGuest
	for _, inst := range only {
		dir, err := d.InstanceDir(inst)
		if err != nil {
			return nil, err
		}
		sock := filepath.Join(dir, guest.AgentSocketName)
		guests = append(guests, guest.OrphanGuest{Instance: inst, Socket: sock, LockPath: guest.LockPath(sock),
			Open: func(ctx context.Context, o guest.Options) (*guest.Client, error) { return guest.Dial(ctx, sock, o) }})
	}
	return guest.ThawOrphanGuests(ctx, guests, opts)
}

// Close implements host.Driver: the QMP connections close; the jobs stay
// in QEMU for a successor to find.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for inst, m := range d.monitors {
		m.Close()
		delete(d.monitors, inst)
	}
	return nil
}
