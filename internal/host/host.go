// Package host is the seam between Raksha's host worker and the compute
// host it runs on: what the host offers for each of its guests (the guest
// agent, a point in time of the guest's disks with their changed extents,
// the disk files of a stopped guest), whatever reaches the hypervisor.
// One package per implementation: host/socket (the lab's socket layout:
// QMP and agent sockets in an instance directory) and host/libvirt (a Nova
// compute node, through libvirtd). Every implementation passes the shared
// suite in host/hosttest against real guests.
package host

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/repo"
)

// ErrInvalid is returned (wrapped) for a name that cannot be an instance or
// a disk of this host (empty, a path, a disk not in the request): the
// request is wrong, not the host.
var ErrInvalid = errors.New("invalid request to the host")

// ErrNotFound is returned (wrapped) when the instance or the disk is not on
// this host.
var ErrNotFound = errors.New("not on this host")

// ErrNoJob is returned (wrapped) by Open when the VM has no job for the
// backup: none was begun, it has ended, or the hypervisor lost it (the
// guest was restarted). The backup cannot go on with this checkpoint.
var ErrNoJob = errors.New("no backup job of the VM for this backup")

// Disk is one disk of a VM in a backup.
type Disk struct {
	// Ref names the disk on the host: the locator's disk part (a QEMU
	// node name on the socket layout; vol-<id>, disk, disk.eph0 or
	// target=<dev> on libvirt).
	Ref string
	// Base is the checkpoint the disk's base manifest recorded; nil when
	// the disk has no base, which makes its read full.
	Base *repo.Checkpoint
	// BaseSize is the size of the disk in its base manifest (0: unknown);
	// a disk whose size changed since is read in full.
	BaseSize int64
}

// Request names one VM's job for one backup.
type Request struct {
	// Instance is the VM as the host knows it (an instance name; on
	// libvirt also a domain UUID).
	Instance string
	// BackupID is the backup's id; checkpoint names derive from it.
	BackupID string
	// Disks are the VM's disks this host reads.
	Disks []Disk
}

// Disk returns the request's disk named ref; an ErrInvalid error when the
// request has none of that name.
func (r Request) Disk(ref string) (*Disk, error) {
	for i := range r.Disks {
		if r.Disks[i].Ref == ref {
			return &r.Disks[i], nil
		}
	}
	return nil, fmt.Errorf("%w: disk %s is not a disk of the request for %s", ErrInvalid, ref, r.Instance)
}

// Export is one disk as it was at the job's checkpoint.
type Export struct {
	// Source reads the disk's content at the checkpoint. The job owns it:
	// it stays open until End.
	Source disk.Source
	// Changed lists the extents written since the disk's base checkpoint
	// when Known; a read of only these over the base manifest gives the
	// disk's content at the new checkpoint.
	Changed []disk.Extent
	Known   bool
	// Record is what the disk's manifest records as its checkpoint: its
	// kind and name (the next backup's base), how the disk is read and
	// why (Mode full with a Reason, or incremental).
	Record repo.Checkpoint
}

// Ending says how End ends a job.
type Ending int

const (
	// Cleanup closes the job's exports and stops the job; the new
	// checkpoint stays, to be committed or aborted later.
	Cleanup Ending = iota
	// Commit ends the job and makes the new checkpoint the disks' base:
	// older checkpoints go.
	Commit
	// Abort ends the job and drops the new checkpoint: the disks' base
	// stays usable and covers every write since it.
	Abort
)

// Driver is a compute host as a host worker sees it. Its methods are safe
// for concurrent use. One job per VM and backup: Begin makes it inside the
// freeze window, Open reads it (from the same driver, or from a new one
// after a worker restart: the job is found again as long as the guest
// runs), End ends it.
type Driver interface {
	// Kind is the locator kind whose disks this driver reads ("qemu" on
	// the socket layout, "libvirt").
	Kind() string
	// Agent opens the guest agent of instance with Raksha's lock and freeze
	// guard (guest.Client); the caller closes it.
	Agent(ctx context.Context, instance string, opts guest.Options) (*guest.Client, error)
	// Begin fixes the point in time of the VM's disks in a new checkpoint
	// named after the backup and starts the job that exports them. Run it
	// inside the freeze window. Each disk is read incrementally against its
	// base when the base validates on the disk, else in full with the
	// reason (Export.Record). It returns the new checkpoint's name.
	Begin(ctx context.Context, req Request) (string, error)
	// Open returns the export of the disk named ref of the VM's job for
	// req.BackupID; ErrNoJob when there is none.
	Open(ctx context.Context, req Request, ref string) (*Export, error)
	// End ends the VM's job for req.BackupID as said. Ending a job that is
	// gone is no error, and so is ending one twice.
	End(ctx context.Context, req Request, how Ending) error
	// DiskFile returns the image file (and its format, "" when the file
	// tells) of the disk file named file ("disk", "disk.eph0") of a
	// stopped instance, for a restore to write.
	DiskFile(ctx context.Context, instance, file string) (path, format string, err error)
	// ThawOrphans thaws the running guests left frozen by a host worker
	// that died (their lock is free); only, when not empty, limits the
	// sweep to those instances.
	ThawOrphans(ctx context.Context, only []string, opts guest.OrphanOptions) ([]guest.OrphanResult, error)
	// Close releases the driver's connections; jobs stay on the host.
	Close() error
}

// Jobs is a driver's registry of the jobs it began or found, one per VM and
// backup; safe for concurrent use. The zero value is ready.
type Jobs[J any] struct {
	mu sync.Mutex
	m  map[string]J
}

func jobKey(req Request) string { return req.BackupID + "/" + req.Instance }

// Get returns the job of req's VM and backup, if registered.
func (r *Jobs[J]) Get(req Request) (J, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	j, ok := r.m[jobKey(req)]
	return j, ok
}

// Add registers j for req's VM and backup unless a job is registered
// already (another call found it first), and returns the registered one.
func (r *Jobs[J]) Add(req Request, j J) J {
	r.mu.Lock()
	defer r.mu.Unlock()
	if have, ok := r.m[jobKey(req)]; ok {
		return have
	}
	if r.m == nil {
		r.m = map[string]J{}
	}
	r.m[jobKey(req)] = j
	return j
}

// Set registers j for req's VM and backup, replacing any.
func (r *Jobs[J]) Set(req Request, j J) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]J{}
	}
	r.m[jobKey(req)] = j
}

// HasInstance reports whether a job of the VM instance is registered, for
// any backup.
func (r *Jobs[J]) HasInstance(instance string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.m {
		if strings.HasSuffix(k, "/"+instance) {
			return true
		}
	}
	return false
}

// Delete forgets the job of req's VM and backup.
func (r *Jobs[J]) Delete(req Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m, jobKey(req))
}
