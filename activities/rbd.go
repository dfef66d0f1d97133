package activities

import (
	"context"
	"errors"
	"fmt"

	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/disk/rbd"
)

// RBDSnapshotInput snapshots the rbd: disks of a backup.
type RBDSnapshotInput struct {
	BackupID string `json:"backup_id"`
	Disks    []Disk `json:"disks"`
}

// RBDFinishInput ends the RBD snapshots of a backup: after the commit the
// older Raksha snapshots go (one base per image remains); after a failure the
// new snapshot goes.
type RBDFinishInput struct {
	BackupID  string `json:"backup_id"`
	Disks     []Disk `json:"disks"`
	Committed bool   `json:"committed"`
}

// RBDSnapshotName is the snapshot a backup takes of each rbd: disk.
func RBDSnapshotName(backupID string) string { return rbd.SnapPrefix + backupID }

func (a *Activities) ceph(ctx context.Context) (*rbd.Conn, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.rbdConn != nil {
		return a.rbdConn, nil
	}
	c, err := rbd.Connect(ctx, rbd.Config{CephConf: a.cfg.CephConf})
	if errors.Is(err, rbd.ErrUnavailable) {
		return nil, temporal.NewNonRetryableApplicationError(err.Error(), ErrInvalid, err)
	}
	if err != nil {
		return nil, err
	}
	a.rbdConn = c
	return c, nil
}

// SnapshotRBD snapshots every rbd: disk of the backup (inside the freeze
// window). Idempotent: an existing snapshot of that name is kept.
func (a *Activities) SnapshotRBD(ctx context.Context, in RBDSnapshotInput) error {
	c, err := a.ceph(ctx)
	if err != nil {
		return err
	}
	name := RBDSnapshotName(in.BackupID)
	for _, d := range in.Disks {
		pool, image, err := d.Locator.RBD()
		if err != nil {
			return invalid("%v", err)
		}
		snaps, err := c.Snapshots(ctx, pool, image)
		if err != nil {
			return err
		}
		exists := false
		for _, s := range snaps {
			exists = exists || s.Name == name
		}
		if exists {
			continue
		}
		if err := c.CreateSnapshot(ctx, pool, image, name); err != nil {
			return err
		}
	}
	return nil
}

// FinishRBD releases or drops the backup's RBD snapshots. After a committed
// backup it also lets go of Raksha's snapshots on the trashed images of the
// pools the backup read (volumes deleted in Cinder since an earlier backup)
// and removes those images.
func (a *Activities) FinishRBD(ctx context.Context, in RBDFinishInput) error {
	c, err := a.ceph(ctx)
	if err != nil {
		return err
	}
	name := RBDSnapshotName(in.BackupID)
	var errs []error
	for _, d := range in.Disks {
		pool, image, err := d.Locator.RBD()
		if err != nil {
			return invalid("%v", err)
		}
		if in.Committed {
			removed, err := c.ReleaseSnapshots(ctx, pool, image, name)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if len(removed) > 0 {
				a.logger(ctx).Info("released older RBD snapshots", "image", pool+"/"+image, "removed", removed)
			}
			continue
		}
		if err := c.DeleteSnapshot(ctx, pool, image, name); err != nil {
			a.logger(ctx).Info("no snapshot of a failed backup to drop", "image", pool+"/"+image, "err", err)
		}
	}
	if in.Committed {
		// Volumes deleted since an earlier backup: Cinder moved their
		// images to the pool's trash, where Raksha's base snapshot would
		// keep them for ever (rbd.Conn.ReleaseTrashed).
		pools := map[string]bool{}
		for _, d := range in.Disks {
			if pool, _, err := d.Locator.RBD(); err == nil && !pools[pool] {
				pools[pool] = true
				released, err := c.ReleaseTrashed(ctx, pool)
				for _, r := range released {
					a.logger(ctx).Info("released the Raksha snapshots of a deleted volume's trashed image",
						"pool", pool, "image", r.Name, "id", r.ID, "snapshots", r.Snapshots, "removed", r.Removed)
				}
				if err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// openRBD opens the backup's snapshot of an rbd: disk, with the extents
// changed since the base backup's snapshot when that one still exists.
func (a *Activities) openRBD(ctx context.Context, in CopyInput) (disk.Source, []disk.Extent, bool, func(), error) {
	pool, image, err := in.Disk.Locator.RBD()
	if err != nil {
		return nil, nil, false, nil, invalid("%v", err)
	}
	c, err := a.ceph(ctx)
	if err != nil {
		return nil, nil, false, nil, err
	}
	src, err := c.OpenSnapshot(ctx, pool, image, RBDSnapshotName(in.BackupID))
	if err != nil {
		return nil, nil, false, nil, fmt.Errorf("open %s: %w", in.Disk.Locator, err)
	}
	release := func() { src.Close() }
	if in.Disk.Base == "" || in.Disk.BaseCheckpoint == "" {
		return src, nil, false, release, nil
	}
	changed, err := src.Changed(in.Disk.BaseCheckpoint)
	if errors.Is(err, rbd.ErrNoBase) {
		a.logger(ctx).Warn("base snapshot unusable, reading the whole image", "image", pool+"/"+image, "err", err)
		return src, nil, false, release, nil
	}
	if err != nil {
		src.Close()
		return nil, nil, false, nil, err
	}
	return src, changed, true, release, nil
}
