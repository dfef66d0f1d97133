package activities

import (
	"fmt"

	"github.com/raksha-backup/raksha/internal/cloud"
)

// PlanRestoreInput names what to restore from a backup.
type PlanRestoreInput struct {
	Repository string `json:"repository"`
	BackupID   string `json:"backup_id"`
	// VMs selects servers by their name in the backup, captured name or id;
	// empty: every server of the backup.
	VMs []string `json:"vms,omitempty"`
	// Volumes selects single volumes by captured id or name: they are
	// restored to new volumes, and no server is made.
	Volumes []string `json:"volumes,omitempty"`
}

// RestorePlan is what a restore will make: per server, its disks in the
// backup. It carries ids and sizes only; the captured server metadata stays
// in the repository and the activity that recreates a server reads it.
type RestorePlan struct {
	BackupID    string          `json:"backup_id"`
	Workload    string          `json:"workload,omitempty"`
	Project     string          `json:"project"` // captured project id
	Consistency string          `json:"consistency,omitempty"`
	VMs         []RestorePlanVM `json:"vms"`
	// Bytes is the total size of the disks to write.
	Bytes int64 `json:"bytes"`
}

// RestorePlanVM is one server of the backup to restore.
type RestorePlanVM struct {
	Name       string `json:"name"` // the VM's name in the backup
	ServerID   string `json:"server_id"`
	ServerName string `json:"server_name"`
	// Host and Instance are where the captured server ran (in-place
	// restores of its ephemeral disks run there).
	Host     string            `json:"host,omitempty"`
	Instance string            `json:"instance,omitempty"`
	Status   string            `json:"status,omitempty"`
	Disks    []RestorePlanDisk `json:"disks"`
}

// RestorePlanDisk is one disk of a server in the backup.
type RestorePlanDisk struct {
	Manifest string `json:"manifest"` // BACKUP/VM/DISK
	Disk     string `json:"disk"`
	Size     int64  `json:"size"`
	// VolumeID is the captured Cinder volume; "" for an ephemeral disk,
	// whose flavor index is Ephemeral.
	VolumeID   string            `json:"volume_id,omitempty"`
	VolumeName string            `json:"volume_name,omitempty"`
	VolumeType string            `json:"volume_type,omitempty"`
	SizeGB     int               `json:"size_gib"`
	Bootable   bool              `json:"bootable,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	Ephemeral  int               `json:"ephemeral"`
	// File is the disk's file in the instance directory of its server
	// ("disk" for the root disk of an image-booted server, "disk.swap",
	// "disk.eph0"),
	// where a restore writes it with the server stopped; "" for a volume.
	// Plans made before root disks were backed up leave it empty for
	// ephemeral disks: InstanceFile fills it in.
	File string `json:"file,omitempty"`
}

// RootDiskName is the backup's name of a server's root disk (the one
// booted from an image; a root volume is named by its volume id);
// SwapDiskName that of its flavor's swap disk.
const (
	RootDiskName = "root"
	SwapDiskName = "swap"
)

// InstanceFile is the file in the server's instance directory that a
// disk other than a volume is written to.
func (d RestorePlanDisk) InstanceFile() string {
	if d.File != "" {
		return d.File
	}
	return fmt.Sprintf("disk.eph%d", d.Ephemeral)
}

// CreateVolumeInput makes an empty volume for a restore.
type CreateVolumeInput struct {
	Project  string            `json:"project"`
	Name     string            `json:"name"`
	SizeGB   int               `json:"size_gib"`
	Type     string            `json:"type,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// VolumeRef names a volume in a project.
type VolumeRef struct {
	Project  string `json:"project"`
	VolumeID string `json:"volume_id"`
}

// ServerRef names a server in a project.
type ServerRef struct {
	Project  string `json:"project"`
	ServerID string `json:"server_id"`
}

// ServerInfo is where a server runs.
type ServerInfo struct {
	ServerID string `json:"server_id"`
	Name     string `json:"name"`
	Status   string `json:"status"`
	Host     string `json:"host"`
	Instance string `json:"instance"`
}

// PowerInput stops or starts a server and waits for it.
type PowerInput struct {
	ServerRef
	Action string `json:"action"` // "stop" or "start"
}

// WriteTarget is where WriteDisk writes: "image" (a disk image file, from a
// local volume connection), "instance-disk" (file File of instance
// Instance's directory on this host: a Nova ephemeral disk) or "rbd".
type WriteTarget struct {
	Kind     string `json:"kind"`
	Path     string `json:"path,omitempty"`
	Format   string `json:"format,omitempty"`
	Instance string `json:"instance,omitempty"`
	File     string `json:"file,omitempty"`
	Pool     string `json:"pool,omitempty"`
	Image    string `json:"image,omitempty"`
}

// String names the target in messages.
func (t WriteTarget) String() string {
	switch t.Kind {
	case "image":
		return "image " + t.Path
	case "instance-disk":
		return "instance " + t.Instance + " disk " + t.File
	case "rbd":
		return "rbd:" + t.Pool + "/" + t.Image
	}
	return t.Kind
}

// TargetFor is the write target of a volume connection and the task queue
// of the worker that can reach it.
func TargetFor(c *cloud.Connection) (WriteTarget, string) {
	if c.Type == "rbd" {
		return WriteTarget{Kind: "rbd", Pool: c.Pool, Image: c.Image}, DataQueue
	}
	q := DataQueue
	if len(c.Hosts) > 0 {
		q = HostQueue(c.Hosts[0])
	}
	return WriteTarget{Kind: "image", Path: c.Path, Format: c.Format}, q
}

// WriteDiskInput restores one disk manifest into a target. The whole disk is
// written: zero ranges and holes too, so the target needs no prior state.
type WriteDiskInput struct {
	Repository string      `json:"repository"`
	Manifest   string      `json:"manifest"`
	Target     WriteTarget `json:"target"`
}

// WriteDiskProgress is WriteDisk's heartbeat.
type WriteDiskProgress struct {
	Done  int64 `json:"done"`
	Total int64 `json:"total"`
	// Manifest and Resume say where a retry of the same write starts: every
	// chunk of Manifest before Resume is written to the target and flushed.
	Manifest string `json:"manifest,omitempty"`
	Resume   int64  `json:"resume,omitempty"`
}

// WriteDiskResult counts what WriteDisk did.
type WriteDiskResult struct {
	Manifest     string  `json:"manifest"`
	Size         int64   `json:"size"`
	BytesFetched int64   `json:"bytes_fetched"`
	BytesWritten int64   `json:"bytes_written"`
	Chunks       int64   `json:"chunks"`
	Holes        int64   `json:"holes"`
	Seconds      float64 `json:"seconds"`
	// ResumedFrom is where this attempt started: the flushed resume point
	// of an earlier attempt whose worker died (0: from the start).
	ResumedFrom int64 `json:"resumed_from,omitempty"`
}

// CreateServerInput recreates one server of a backup from its captured
// metadata (read from the repository by this activity).
type CreateServerInput struct {
	Repository string `json:"repository"`
	BackupID   string `json:"backup_id"`
	VM         string `json:"vm"` // the VM's name in the backup
	Project    string `json:"project"`
	// Volumes maps captured volume ids to the restored volumes.
	Volumes      map[string]string `json:"volumes,omitempty"`
	NamePrefix   string            `json:"name_prefix,omitempty"`
	Networks     map[string]string `json:"networks,omitempty"`
	Flavors      map[string]string `json:"flavors,omitempty"`
	KeepFixedIPs bool              `json:"keep_fixed_ips,omitempty"`
	// Metadata is added to the captured metadata (restore and clone labels).
	Metadata map[string]string `json:"metadata,omitempty"`
}

// GuestRunInput runs a command in a guest through its agent (clone
// post-restore hooks and health checks).
type GuestRunInput struct {
	Instance string `json:"instance"`
	Hook     Hook   `json:"hook"`
	// WaitAgent is how long to wait for the agent to answer (a guest that
	// just booted).
	WaitAgent int `json:"wait_agent_seconds,omitempty"`
}

// GuestRunResult is a guest command's outcome: of its output, the last
// guest.OutputTailSize bytes with obvious secrets redacted (guest.Tail).
type GuestRunResult struct {
	ExitCode int     `json:"exit_code"`
	Stdout   string  `json:"stdout,omitempty"`
	Stderr   string  `json:"stderr,omitempty"`
	Seconds  float64 `json:"seconds"`
}

// FindByLabelInput lists the servers and volumes carrying a metadata label
// (a clone's resources).
type FindByLabelInput struct {
	Project string `json:"project"`
	Key     string `json:"key"`
	Value   string `json:"value"`
}

// Resources are servers and volumes of a project.
type Resources struct {
	Servers []string `json:"servers,omitempty"`
	Volumes []string `json:"volumes,omitempty"`
}
