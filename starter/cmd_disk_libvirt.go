package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/freezerec"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/watchdog"
)

// libvirtLocator is a disk of a libvirt domain: libvirt:DOMAIN/TARGET,
// DOMAIN a UUID or a name.
type libvirtLocator struct{ Domain, Target string }

func isLibvirt(arg string) bool { return strings.HasPrefix(arg, "libvirt:") }

func parseLibvirtLocator(arg string) (libvirtLocator, error) {
	dom, target, ok := strings.Cut(strings.TrimPrefix(arg, "libvirt:"), "/")
	if !ok || dom == "" || target == "" || strings.Contains(target, "/") {
		return libvirtLocator{}, usagef("%q: want libvirt:DOMAIN/TARGET (DOMAIN a UUID or name, TARGET a disk such as vda)", arg)
	}
	return libvirtLocator{Domain: dom, Target: target}, nil
}

// libvirtFlags are disk backup's options for libvirt: sources.
type libvirtFlags struct {
	uri, lockDir, workDir string
	noFreeze              bool
	freezeTimeout         time.Duration
}

// libvirtCopy is a libvirt disk being backed up: the export, its changed
// extents, the checkpoint to record, and how to finish.
type libvirtCopy struct {
	src     disk.Source
	changed []disk.Extent
	known   bool
	cp      *repo.Checkpoint
	mode    libvirt.DiskMode
	// finish ends the job and, after a commit, releases the base's
	// bitmaps; after a failure it releases the new checkpoint's (the base
	// keeps recording and stays the base).
	finish func(ctx context.Context, committed bool) error
}

// freezeWatchdog opens the freeze records of a libvirt disk backup
// (WORK_DIR/freezes, the host worker's default on libvirt, so that one
// watchdog serves both) and starts a watchdog process for them (package
// watchdog): if this process dies with the guest frozen (SIGKILL, OOM), the
// watchdog thaws it at the freeze deadline. The freeze is recorded before
// it is sent, and nothing is frozen when the watchdog cannot start.
func (a *app) freezeWatchdog(f libvirtFlags) (*freezerec.Dir, error) {
	dir, err := freezerec.Open(filepath.Join(f.workDir, "freezes"))
	if err != nil {
		return nil, err
	}
	cmd, err := watchdog.StartFor(dir.Path())
	if err != nil {
		return nil, fmt.Errorf("freeze watchdog (nothing was frozen): %w", err)
	}
	go cmd.Wait() // reaped if it ends first; else it ends by itself after this process, once no record remains
	a.phase("freeze watchdog started", "pid", cmd.Process.Pid, "dir", dir.Path())
	return dir, nil
}

// beginLibvirt freezes the guest (unless noFreeze), starts a pull backup of
// the disk with a new checkpoint and thaws; the base backup's checkpoint,
// if its manifest recorded one of this domain, makes it incremental.
func (a *app) beginLibvirt(ctx context.Context, r *repo.Repository, loc libvirtLocator, base string, f libvirtFlags) (*libvirtCopy, error) {
	c, err := libvirt.Dial(ctx, f.uri, libvirt.Options{Logger: a.log})
	if err != nil {
		return nil, err
	}
	dom, err := c.Domain(ctx, loc.Domain)
	if err != nil {
		c.Close()
		return nil, err
	}
	a.phase("libvirt connected", "domain", dom.Name)
	var baseCP *libvirt.Checkpoint
	if base != "" {
		if m, err := r.LoadManifest(ctx, base); err == nil && m.Checkpoint != nil && m.Checkpoint.Kind == libvirt.CheckpointKind {
			var cp libvirt.Checkpoint
			if err := json.Unmarshal([]byte(m.Checkpoint.Data), &cp); err != nil {
				a.log.Warn("base checkpoint record unreadable: full read", "base", base, "err", err)
			} else {
				baseCP = &cp
			}
		}
	}
	var h *guest.FreezeHandle
	var ag *guest.Client
	if !f.noFreeze {
		freezes, err := a.freezeWatchdog(f)
		if err != nil {
			c.Close()
			return nil, err
		}
		ag, err = libvirt.OpenAgent(ctx, c, libvirt.UUIDString(dom.UUID), libvirt.AgentOptions{LockDir: f.lockDir, Freezes: freezes,
			Guest: guest.Options{Logger: a.log, Owner: "raksha disk backup"}})
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("freeze %s: %w (--no-freeze backs up without freezing: crash-consistent)", dom.Name, err)
		}
		h, err = ag.Freeze(ctx, guest.FreezeOptions{Timeout: f.freezeTimeout})
		if err != nil {
			ag.Close()
			c.Close()
			return nil, fmt.Errorf("freeze %s: %w", dom.Name, err)
		}
	}
	name := libvirt.CheckpointPrefix + newCheckpointID()
	work := filepath.Join(f.workDir, libvirt.UUIDString(dom.UUID))
	a.phase("ready to begin", "frozen", h != nil, "base", baseCP != nil)
	bk, berr := libvirt.Begin(ctx, c, dom, libvirt.BeginOptions{Name: name, Disks: []string{loc.Target}, Base: baseCP, WorkDir: work,
		// Frozen, the CLI holds the guest's lock (--lock-dir): a backup job
		// found on the domain was left by a raksha or worker that died.
		EndStaleBackupJob: ag != nil})
	a.phase("checkpoint and backup job begun")
	if h != nil {
		rep, terr := h.Thaw(context.WithoutCancel(ctx))
		ag.Close()
		if terr != nil && berr == nil {
			berr = fmt.Errorf("thaw %s: %w", dom.Name, terr)
		}
		if rep != nil && rep.GuardThawed && berr == nil {
			berr = fmt.Errorf("thaw %s: the freeze deadline (%v) passed before the checkpoint: not application-consistent", dom.Name, f.freezeTimeout)
		}
		if rep != nil {
			a.log.Info("guest thawed", "domain", dom.Name, "window", rep.Window)
		}
	}
	if berr != nil {
		if bk != nil {
			_ = bk.End(context.WithoutCancel(ctx))
			_ = libvirt.Release(context.WithoutCancel(ctx), c, dom, bk.Checkpoint)
			_ = bk.Forget()
		}
		c.Close()
		return nil, berr
	}
	src, err := bk.Open(ctx, loc.Target, 4)
	if err != nil {
		_ = bk.End(context.WithoutCancel(ctx))
		_ = libvirt.Release(context.WithoutCancel(ctx), c, dom, bk.Checkpoint)
		_ = bk.Forget()
		c.Close()
		return nil, err
	}
	a.phase("export open")
	lc := &libvirtCopy{src: src, mode: bk.Modes[0]}
	if lc.mode.Mode == "incremental" {
		if lc.changed, err = src.Changed(); err != nil {
			a.log.Warn("changed extents unreadable: full read", "err", err)
			lc.mode = libvirt.DiskMode{Target: loc.Target, Mode: "full", Reason: "changed extents unreadable: " + err.Error()}
		} else {
			lc.known = true
		}
	}
	data, err := json.Marshal(bk.Checkpoint)
	if err != nil {
		return nil, err
	}
	lc.cp = &repo.Checkpoint{Kind: libvirt.CheckpointKind, Name: bk.Checkpoint.Name, Mode: lc.mode.Mode, Reason: lc.mode.Reason, Data: string(data)}
	lc.finish = func(ctx context.Context, committed bool) error {
		defer c.Close()
		err := errors.Join(src.Close(), bk.End(ctx))
		a.phase("backup job ended")
		if committed {
			if baseCP != nil {
				err = errors.Join(err, libvirt.Release(ctx, c, dom, *baseCP))
			}
		} else {
			err = errors.Join(err, libvirt.Release(ctx, c, dom, bk.Checkpoint))
		}
		return errors.Join(err, bk.Forget())
	}
	return lc, nil
}

// newCheckpointID is a unique checkpoint id: the time and random bits.
func newCheckpointID() string {
	return time.Now().UTC().Format("20060102T150405Z") + "-" + randomHex(4)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
