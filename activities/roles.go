package activities

import (
	"context"
	"sort"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/worker"
)

// Worker roles. Each role's worker registers only the activities that role
// serves (RegisterRole), so that whoever can schedule an activity on a task
// queue reaches no more than that queue's role does: no guest command, freeze
// or host-path write on raksha-control or raksha-data, no cloud or repository
// administration on a host queue.
const (
	RoleControl = "control"
	RoleData    = "data"
	RoleHost    = "host"
)

// RoleActivities returns the activities of role by name (the name the
// workflows schedule them by: the method's name), or nil for an unknown
// role.
//
//   - control (raksha-control): discovery and the repository session
//     (Begin, Commit, Abort, Prune), maintenance, the semaphores, and the
//     restore's cloud steps.
//   - data (raksha-data): RBD snapshots, copies of rbd: disks and restores
//     into RBD images (CopyDisk refuses qemu: and libvirt: disks and
//     WriteDisk an instance's disk there: those are the host workers').
//   - host (raksha-host-<host>): freeze, thaw, hooks and guest commands,
//     checkpoints, copies of the host's disks and restores into its files.
func RoleActivities(a *Activities, role string) map[string]any {
	switch role {
	case RoleControl:
		return map[string]any{
			"ResolveProject": a.ResolveProject, "Begin": a.Begin, "Commit": a.Commit, "Abort": a.Abort, "Prune": a.Prune,
			"PruneExpired": a.PruneExpired, "CollectGarbage": a.CollectGarbage, "VerifyRepository": a.VerifyRepository,
			"AcquirePermits": a.AcquirePermits, "ClosedRuns": a.ClosedRuns,
			"FindNewestBackup": a.FindNewestBackup, "RecordDrill": a.RecordDrill,
			"PlanRestore": a.PlanRestore, "CreateRestoreVolume": a.CreateRestoreVolume, "WaitRestoreVolume": a.WaitRestoreVolume,
			"ConnectVolume": a.ConnectVolume, "DisconnectVolume": a.DisconnectVolume,
			"CreateRestoreServer": a.CreateRestoreServer, "WaitRestoreServer": a.WaitRestoreServer, "ServerInfo": a.ServerInfo,
			"PowerServer": a.PowerServer, "DeleteRestoreServer": a.DeleteRestoreServer, "DeleteRestoreVolume": a.DeleteRestoreVolume,
			"FindByLabel": a.FindByLabel,
		}
	case RoleData:
		return map[string]any{
			"SnapshotRBD": a.SnapshotRBD, "FinishRBD": a.FinishRBD,
			"CopyDisk": a.copyDiskData, "WriteDisk": a.writeDiskData,
		}
	case RoleHost:
		return map[string]any{
			"Freeze": a.Freeze, "Thaw": a.Thaw, "RunHooks": a.RunHooks, "GuestRun": a.GuestRun,
			"Checkpoint": a.Checkpoint, "FinishCheckpoint": a.FinishCheckpoint,
			"CopyDisk": a.CopyDisk, "WriteDisk": a.WriteDisk,
		}
	}
	return nil
}

// RegisterRole registers on w the activities of role (RoleActivities), each
// under its method's name, and returns their names sorted. An unknown role
// registers nothing and returns nil.
func RegisterRole(w worker.ActivityRegistry, a *Activities, role string) []string {
	acts := RoleActivities(a, role)
	names := make([]string, 0, len(acts))
	for name := range acts {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		w.RegisterActivityWithOptions(acts[name], activity.RegisterOptions{Name: name})
	}
	return names
}

// copyDiskData is CopyDisk as the data role serves it: rbd: disks only. A
// qemu: or libvirt: disk is read by its host's worker, never on raksha-data.
func (a *Activities) copyDiskData(ctx context.Context, in CopyInput) (*CopyResult, error) {
	if in.Disk.Locator.HostLocal() {
		return nil, invalid("copy %s: disk %s (%s) is read by its host's worker, not on %s", in.BackupID, in.Disk.Name, in.Disk.Locator, DataQueue)
	}
	return a.CopyDisk(ctx, in)
}

// writeDiskData is WriteDisk as the data role serves it: an instance's
// disk file is written by its host's worker, never on raksha-data; image
// paths are held to the write roots as everywhere.
func (a *Activities) writeDiskData(ctx context.Context, in WriteDiskInput) (*WriteDiskResult, error) {
	if in.Target.Kind == "instance-disk" {
		return nil, invalid("restore %s: target %s is written by its host's worker, not on %s", in.Manifest, in.Target, DataQueue)
	}
	return a.WriteDisk(ctx, in)
}
