// Package activities holds Raksha's Temporal activities: thin adapters from
// workflow steps to the internal packages (repository, guest agent, QMP,
// RBD, cloud). Inputs and outputs are small structs: ids, names and
// numbers, never disk data or secrets (DESIGN.md, Secrets).
package activities

import (
	"fmt"
	"strings"
	"time"

	"github.com/raksha-backup/raksha/internal/cloud"
)

// Task queues.
const (
	ControlQueue = "raksha-control"
	DataQueue    = "raksha-data"
)

// HostQueue is the task queue of the host worker of a compute host.
func HostQueue(host string) string { return "raksha-host-" + host }

// ActivityPollers is how many activity task polls a Raksha worker keeps
// open on each of its task queues (worker.Options.MaxConcurrentActivityTaskPollers).
// It is at least a Temporal server's default partition count of a task
// queue (4), so that a burst of activities finds a poll waiting on every
// partition. With the SDK's default of 2, a task written to a partition
// with no poll waits for forwarding or in the backlog: on the dev server a
// burst of one checkpoint or thaw per VM of 20 VMs on one host (inside the
// freeze window) had some start 2 s late; with 8 none was.
const ActivityPollers = 8

// Locator says where a disk is and so which worker can read it:
// "qemu:HOST/INSTANCE/NODE" (a QEMU drive reached through the host's
// sockets: only the host worker of HOST), "libvirt:HOST/DOMAIN/DISK" (a
// disk of a libvirt domain, DOMAIN its UUID or name and DISK what the
// domain XML is searched for, see libvirt.ResolveDisk: only the host worker
// of HOST), or "rbd:POOL/IMAGE" (any data worker with Ceph access).
type Locator string

// Kind is "qemu", "libvirt" or "rbd".
func (l Locator) Kind() string { k, _, _ := strings.Cut(string(l), ":"); return k }

// HostLocal reports whether only the host worker of the disk's compute host
// can read it (qemu: and libvirt: disks): its checkpoint and copy run on
// that host's queue.
func (l Locator) HostLocal() bool { k := l.Kind(); return k == "qemu" || k == "libvirt" }

// Libvirt splits a libvirt: locator.
func (l Locator) Libvirt() (host, domain, disk string, err error) {
	rest, ok := strings.CutPrefix(string(l), "libvirt:")
	parts := strings.Split(rest, "/")
	if !ok || len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return "", "", "", fmt.Errorf("locator %q: want libvirt:HOST/DOMAIN/DISK", l)
	}
	return parts[0], parts[1], parts[2], nil
}

// QEMU splits a qemu: locator.
func (l Locator) QEMU() (host, instance, node string, err error) {
	rest, ok := strings.CutPrefix(string(l), "qemu:")
	parts := strings.Split(rest, "/")
	if !ok || len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return "", "", "", fmt.Errorf("locator %q: want qemu:HOST/INSTANCE/NODE", l)
	}
	return parts[0], parts[1], parts[2], nil
}

// RBD splits an rbd: locator.
func (l Locator) RBD() (pool, image string, err error) {
	rest, ok := strings.CutPrefix(string(l), "rbd:")
	pool, image, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 || pool == "" || image == "" {
		return "", "", fmt.Errorf("locator %q: want rbd:POOL/IMAGE", l)
	}
	return pool, image, nil
}

// Disk is one disk of a VM in a backup.
type Disk struct {
	// Name is the disk's name in the backup (BACKUP/VM/NAME).
	Name    string  `json:"name"`
	Locator Locator `json:"locator"`
	// VolumeID is the Cinder volume, "" for an ephemeral disk.
	VolumeID string `json:"volume_id,omitempty"`
	Size     int64  `json:"size"`
	// Base is the disk manifest of the previous backup of this disk and
	// BaseCheckpoint its CBT token (bitmap or RBD snapshot); "" for none.
	Base           string `json:"base,omitempty"`
	BaseCheckpoint string `json:"base_checkpoint,omitempty"`
}

// VM is one server of a workload.
type VM struct {
	ID   string `json:"id"`
	Name string `json:"name"` // the VM's name in the backup
	// Host is the compute host (its worker serves HostQueue(Host)) and
	// Instance the hypervisor's name of the VM.
	Host     string `json:"host"`
	Instance string `json:"instance"`
	Disks    []Disk `json:"disks"`
}

// Selector picks the servers of a workload (the cloud adapter's selector).
type Selector = cloud.Selector

// Hook is a guest command run before the freeze or after the thaw.
type Hook struct {
	Name    string        `json:"name,omitempty"`
	Path    string        `json:"path"`
	Args    []string      `json:"args,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
}

// BeginInput starts a workload backup.
type BeginInput struct {
	Repository string            `json:"repository"` // a repository id of the workers' registry
	BackupID   string            `json:"backup_id"`  // chosen by the workflow (deterministic)
	Workload   string            `json:"workload"`
	Project    string            `json:"project,omitempty"`
	Policy     string            `json:"policy,omitempty"`
	Selector   Selector          `json:"selector"`
	Labels     map[string]string `json:"labels,omitempty"`
	Expires    *time.Time        `json:"expires,omitempty"`
}

// BeginResult is the workload as discovered now, with each disk's base.
type BeginResult struct {
	BackupID string `json:"backup_id"`
	VMs      []VM   `json:"vms"`
	// ProjectID is the workload's project as discovery resolved it (the
	// captured metadata's project id; the request's project when the
	// discoverer captures none): the key of its backups with the workload.
	ProjectID string `json:"project_id,omitempty"`
}

// FreezeInput freezes one VM's guest.
type FreezeInput struct {
	Instance    string        `json:"instance"`
	Timeout     time.Duration `json:"timeout"`
	PreHooks    []Hook        `json:"pre_hooks,omitempty"`
	PostHooks   []Hook        `json:"post_hooks,omitempty"`
	HookFailure string        `json:"hook_failure,omitempty"` // "fail" (default) or "continue"
}

// FreezeResult says whether the guest is frozen.
type FreezeResult struct {
	// NoAgent is true when the guest agent did not answer: nothing was frozen.
	NoAgent    bool      `json:"no_agent"`
	FreezeSent time.Time `json:"freeze_sent"`
	Deadline   time.Time `json:"deadline"`
}

// ThawInput thaws one VM's guest.
type ThawInput struct {
	Instance string `json:"instance"`
}

// ThawResult reports the freeze window.
type ThawResult struct {
	// WasFrozen is false when there was nothing to thaw.
	WasFrozen   bool          `json:"was_frozen"`
	GuardThawed bool          `json:"guard_thawed"`
	Window      time.Duration `json:"window"`
	// Lost says why the freeze's thaw was lost when the worker that froze
	// the guest is gone (this worker holds no freeze of it): the guest was
	// thawed by someone else (the freeze watchdog at the deadline, a
	// restarted worker's orphan sweep) or by this Thaw, not by its owner
	// in time. GuardThawed is set then: the window is unknown.
	Lost string `json:"lost,omitempty"`
}

// CheckpointInput fixes the point in time of one VM's host-local disks.
type CheckpointInput struct {
	BackupID string `json:"backup_id"`
	Instance string `json:"instance"`
	Disks    []Disk `json:"disks"`
	// Repository holds the disks' base manifests, whose recorded libvirt
	// checkpoint the host worker redefines (libvirt: disks); "" in
	// histories from before it.
	Repository string `json:"repository,omitempty"`
}

// CheckpointResult names the new checkpoint.
type CheckpointResult struct {
	Bitmap string `json:"bitmap"`
}

// CopyInput copies one disk into the backup.
type CopyInput struct {
	Repository string `json:"repository"`
	BackupID   string `json:"backup_id"`
	VM         string `json:"vm"`
	Instance   string `json:"instance,omitempty"`
	Disk       Disk   `json:"disk"`
	// Checkpoint is the token the copy is taken at (bitmap or RBD snapshot).
	Checkpoint string `json:"checkpoint"`
	// VMDisks are all disks of the VM, so that a host worker that restarted
	// can find the VM's checkpoint again.
	VMDisks []Disk `json:"vm_disks,omitempty"`
}

// CopyProgress is the heartbeat detail of CopyDisk.
type CopyProgress struct {
	Done      int64 `json:"done"`
	Total     int64 `json:"total"`
	BytesRead int64 `json:"bytes_read"`
	BytesNew  int64 `json:"bytes_new"`
	// Resume is the byte offset of the last saved position (the partial
	// manifest in the repository); a retry continues from there.
	Resume int64 `json:"resume"`
}

// CopyResult is the disk manifest written.
type CopyResult struct {
	Manifest    string  `json:"manifest"`
	Size        int64   `json:"size"`
	BytesRead   int64   `json:"bytes_read"`
	BytesNew    int64   `json:"bytes_new"`
	BytesReused int64   `json:"bytes_reused"`
	BytesStored int64   `json:"bytes_stored"`
	Incremental bool    `json:"incremental"`
	Seconds     float64 `json:"seconds"`
	// ResumedFrom is the byte offset a retried copy continued from (0: the
	// last attempt did the whole copy).
	ResumedFrom int64 `json:"resumed_from,omitempty"`
}

// What FinishCheckpoint does.
const (
	// FinishCleanup removes the exports and temporary nodes; bitmaps stay.
	FinishCleanup = "cleanup"
	// FinishRelease (after the commit) also removes the older bitmaps: one
	// base per disk remains.
	FinishRelease = "release"
	// FinishAbort (the backup failed) merges the new bitmap back into the
	// previous one, so the last committed checkpoint stays a complete base.
	FinishAbort = "abort"
)

// FinishInput ends one VM's checkpoint cycle on its host.
type FinishInput struct {
	BackupID string `json:"backup_id"`
	Instance string `json:"instance"`
	Disks    []Disk `json:"disks"`
	Action   string `json:"action"`
}

// CommitInput writes the backup record.
type CommitInput struct {
	Repository    string                   `json:"repository"`
	BackupID      string                   `json:"backup_id"`
	Consistency   string                   `json:"consistency"`
	Manifests     []string                 `json:"manifests"`
	FreezeWindows map[string]time.Duration `json:"freeze_windows,omitempty"`
	// WorkloadWindow is the first freeze to the last thaw.
	WorkloadWindow time.Duration `json:"workload_window,omitempty"`
}

// CommitResult summarises the committed backup.
type CommitResult struct {
	BackupID    string `json:"backup_id"`
	Disks       int    `json:"disks"`
	BytesRead   int64  `json:"bytes_read"`
	BytesNew    int64  `json:"bytes_new"`
	BytesStored int64  `json:"bytes_stored"`
}

// AbortInput drops a backup that will not be committed.
type AbortInput struct {
	Repository string `json:"repository"`
	BackupID   string `json:"backup_id"`
}

// PruneInput applies retention to a workload's backups: those labelled
// Labels (the workload label at least) of project Project (RecordProject).
type PruneInput struct {
	Repository string            `json:"repository"`
	Labels     map[string]string `json:"labels"`
	Retention  Retention         `json:"retention"`
	// ByProject says Project is set (BeginResult.ProjectID, "" when the
	// discoverer captures no project); without it Prune refuses.
	ByProject bool   `json:"by_project,omitempty"`
	Project   string `json:"project,omitempty"`
}

// Retention mirrors repo.Retention for workflow inputs.
type Retention struct {
	Last    int `json:"last,omitempty" yaml:"last"`
	Hourly  int `json:"hourly,omitempty" yaml:"hourly"`
	Daily   int `json:"daily,omitempty" yaml:"daily"`
	Weekly  int `json:"weekly,omitempty" yaml:"weekly"`
	Monthly int `json:"monthly,omitempty" yaml:"monthly"`
	Yearly  int `json:"yearly,omitempty" yaml:"yearly"`
}

// PruneResult lists the backups removed.
type PruneResult struct {
	Removed []string `json:"removed"`
}
