package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/raksha-backup/raksha/internal/appliance"
	"github.com/raksha-backup/raksha/internal/filerestore"
	"github.com/raksha-backup/raksha/internal/loopfs"
	"github.com/raksha-backup/raksha/internal/mountfs"
)

// Where 'restore files' mounts a file system that needs a kernel (XFS; ext4
// whose journal needs recovery): --mount-in.
const (
	mountInAppliance = "appliance" // a throwaway QEMU guest's kernel (internal/appliance)
	mountInHost      = "host"      // this host's kernel (internal/loopfs)
)

// kernelMount says where and with what a file system that needs a kernel
// is mounted.
type kernelMount struct {
	in           string // mountInAppliance or mountInHost
	applianceDir string // --appliance ("" : $RAKSHA_APPLIANCE)
}

// check says why the fstype file system cannot be mounted the way km says
// (nil when it can).
func (km kernelMount) check(fstype string) error {
	if km.in == mountInHost {
		return loopfs.Check(fstype)
	}
	var missing []error
	if _, err := appliance.FindImage(km.applianceDir); err != nil {
		missing = append(missing, err)
	}
	if err := appliance.Check(); err != nil {
		missing = append(missing, err)
	}
	// the volume reaches QEMU as a file of a private FUSE view
	if err := mountfs.Check(); err != nil {
		missing = append(missing, err)
	}
	if len(missing) > 0 {
		return fmt.Errorf("the appliance cannot run here: %w", errors.Join(missing...))
	}
	return nil
}

// kernelOutcome is what a kernel mount's extraction did.
type kernelOutcome struct {
	st          filerestore.Stats
	replayed    int64  // bytes the log recovery wrote into the private overlay
	recoveryErr string // why the file system was mounted without recovery
	appliance   *applianceCost
}

// applianceCost is what the appliance took ('restore files -f json').
type applianceCost struct {
	Accel      string `json:"accel"`
	BootMs     int64  `json:"boot_ms"`
	DurationMs int64  `json:"duration_ms"`
	PeakRSS    int64  `json:"peak_rss"`
	Options    string `json:"mount_options"`
}

// extractKernel copies path out of the fstype file system on vol with a kernel,
// as km says: in the appliance, or loop-mounted on this host.
func (a *app) extractKernel(ctx context.Context, km kernelMount, vol *filerestore.Volume, fstype, source, path, to string, xopts filerestore.ExtractOptions) (kernelOutcome, error) {
	if km.in == mountInHost {
		st, m, err := a.extractLoop(ctx, vol, fstype, source, path, to, xopts)
		o := kernelOutcome{st: st}
		if m != nil {
			o.replayed = m.Replayed
			if m.RecoveryErr != nil {
				o.recoveryErr = m.RecoveryErr.Error()
			}
		}
		return o, err
	}
	return a.extractAppliance(ctx, km, vol, fstype, source, path, to, xopts)
}

// extractAppliance serves vol as a file through a private FUSE view and
// has the appliance extract path from it; the view is gone when it
// returns.
func (a *app) extractAppliance(ctx context.Context, km kernelMount, vol *filerestore.Volume, fstype, source, path, to string, xopts filerestore.ExtractOptions) (o kernelOutcome, err error) {
	img, err := appliance.FindImage(km.applianceDir)
	if err != nil {
		return o, err
	}
	tmp, err := os.MkdirTemp("", "raksha-appliance-src-")
	if err != nil {
		return o, fmt.Errorf("serve the volume to the appliance: %w", err)
	}
	defer func() {
		if rerr := os.Remove(tmp); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove %s: %w", tmp, rerr))
		}
	}()
	view, err := mountfs.MountRaw(tmp, []mountfs.RawFile{{Name: "disk.img", R: vol, Size: vol.Size}}, mountfs.Options{Source: source, Log: a.log})
	if err != nil {
		return o, fmt.Errorf("serve the volume to the appliance: %w", err)
	}
	defer func() {
		var uerr error
		for k := 0; k < 50; k++ {
			if uerr = view.Unmount(); uerr == nil || !errors.Is(uerr, syscall.EBUSY) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmount the volume's FUSE view: %w", uerr))
		}
	}()
	res, err := appliance.Extract(ctx, img, filepath.Join(tmp, "disk.img"), fstype, path, to, appliance.Options{Extract: xopts, Log: a.log})
	o.st, o.replayed, o.recoveryErr = res.Stats, res.Replayed, res.RecoveryErr
	o.appliance = &applianceCost{Accel: res.Accel, BootMs: res.Boot.Milliseconds(), DurationMs: res.Duration.Milliseconds(), PeakRSS: res.PeakRSS, Options: res.Options}
	return o, err
}
