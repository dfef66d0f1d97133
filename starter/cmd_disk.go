package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/raksha-backup/raksha/internal/disk"
	"github.com/raksha-backup/raksha/internal/disk/file"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/repo"
)

// standaloneVM is the VM name of disk manifests made by 'raksha disk backup'.
const standaloneVM = "local"

func (a *app) diskCmd() *cobra.Command {
	c := &cobra.Command{Use: "disk", Short: "Back up and restore disk images and block devices"}
	c.AddCommand(a.diskBackupCmd(), a.diskRestoreCmd())
	return c
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// diskNameFor turns an image path into a manifest disk name.
func diskNameFor(path string) string {
	n := strings.Trim(unsafeName.ReplaceAllString(filepath.Base(path), "_"), "._-")
	if n == "" {
		n = "disk"
	}
	if len(n) > 128 {
		n = n[:128]
	}
	return n
}

// rbdLocator names an RBD image, and for a backup its snapshot:
// rbd:POOL/IMAGE[@SNAP].
type rbdLocator struct{ Pool, Image, Snap string }

func (l rbdLocator) String() string {
	s := l.Pool + "/" + l.Image
	if l.Snap != "" {
		s += "@" + l.Snap
	}
	return s
}

// image is rbd:POOL/IMAGE without the snapshot: the manifest's Name, which
// the base of the next backup of the image must match.
func (l rbdLocator) image() string { return "rbd:" + l.Pool + "/" + l.Image }

func isRBD(arg string) bool { return strings.HasPrefix(arg, "rbd:") }

var rbdPart = regexp.MustCompile(`^[^/@\s]+$`)

// parseRBDLocator parses rbd:POOL/IMAGE@SNAP (snap required) or rbd:POOL/IMAGE (snap forbidden).
func parseRBDLocator(arg string, snap bool) (rbdLocator, error) {
	want := "rbd:POOL/IMAGE"
	if snap {
		want += "@SNAP"
	}
	rest := strings.TrimPrefix(arg, "rbd:")
	var l rbdLocator
	if i := strings.IndexByte(rest, '@'); i >= 0 {
		l.Snap = rest[i+1:]
		rest = rest[:i]
		if !rbdPart.MatchString(l.Snap) {
			return l, usagef("%q: invalid snapshot name (want %s)", arg, want)
		}
	}
	pool, image, ok := strings.Cut(rest, "/")
	if !ok || !rbdPart.MatchString(pool) || !rbdPart.MatchString(image) {
		return l, usagef("%q: want %s", arg, want)
	}
	l.Pool, l.Image = pool, image
	switch {
	case snap && l.Snap == "":
		return l, usagef("%q: an RBD backup reads a snapshot (a point-in-time view): want %s, e.g. create one with 'rbd snap create %s@NAME'", arg, want, l)
	case !snap && l.Snap != "":
		return l, usagef("%q: a restore writes an image, not a snapshot: want %s", arg, want)
	}
	return l, nil
}

// rbdSource is an open RBD snapshot (cmd_disk_rbd.go; a build without Ceph
// support cannot open one).
type rbdSource interface {
	disk.Source
	// Changed lists the extents changed since the base snapshot; noBase
	// means the base cannot serve as a diff base (missing, not older).
	Changed(base string) (exts []disk.Extent, noBase bool, err error)
}

func (a *app) cephConf(flag string) string {
	if flag != "" {
		return flag
	}
	return a.getenv("CEPH_CONF")
}

type diskBackupResult struct {
	ID     string            `json:"id"`
	Disk   string            `json:"disk"`
	Base   string            `json:"base,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	Stats  repo.DiskStats    `json:"stats"`
	// Mode and Reason: how the disk was read, where the source says
	// (libvirt: "incremental", or "full" and why).
	Mode   string `json:"mode,omitempty"`
	Reason string `json:"reason,omitempty"`
}

func (a *app) diskBackupCmd() *cobra.Command {
	var labels, tags []string
	var extentsFile, baseID, expires, diskName, baseSnap, cephConf string
	var lf libvirtFlags
	c := &cobra.Command{
		Use:   "backup --repo URL [--label k=v]... [--changed-extents FILE] [--base ID] PATH | rbd:POOL/IMAGE@SNAP [--base-snapshot SNAP0] | libvirt:DOMAIN/TARGET",
		Short: "Back up a disk image, block device or RBD snapshot; prints the new backup id",
		Long: `Back up a disk image or block device.

The base of an incremental backup is --base, or else the newest backup with
exactly the same label set that holds a disk of the same name and source path;
with none, every allocated byte is read. --changed-extents FILE is a JSON list
[{"offset": N, "length": N}, ...] of the byte ranges changed since the base:
chunks no range touches are taken from the base unread. Without it every
allocated chunk is read and only changed chunks are uploaded.

rbd:POOL/IMAGE@SNAP backs up an RBD snapshot (a build with Ceph support;
--ceph-conf or CEPH_CONF says how to reach the cluster). With --base-snapshot
SNAP0, the snapshot the base backup was taken from, the changed extents come
from the RBD snapshot diff SNAP0..SNAP and only the chunks they touch are
read. A base backup of another disk or snapshot, or a SNAP0 that is missing
or not older than SNAP, means a full read (with a warning), never an
incomplete backup.

libvirt:DOMAIN/TARGET backs up a disk of a running libvirt domain (DOMAIN a
UUID, such as a Nova instance id, or a name; TARGET the guest device, such
as vda) through libvirt's pull-mode backup, on the host that runs it: the
guest is frozen through its agent (--no-freeze: crash-consistent), a
libvirt checkpoint is made, and the guest thawed. With a base backup of the
same disk that recorded a checkpoint whose bitmaps still validate, only the
extents written since are read; otherwise the whole disk, with the reason
in the manifest. No checkpoint metadata stays in libvirt.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			path := args[0]
			lbl, err := parseLabels(labels)
			if err != nil {
				return err
			}
			exp, err := parseExpiry(expires, time.Now())
			if err != nil {
				return err
			}
			var (
				src        disk.Source
				rsrc       rbdSource
				loc        rbdLocator
				abs        string
				checkpoint *repo.Checkpoint
			)
			if isRBD(path) {
				if loc, err = parseRBDLocator(path, true); err != nil {
					return err
				}
				if extentsFile != "" {
					return usagef("--changed-extents does not apply to %s: the RBD snapshot diff gives the changed extents (--base-snapshot)", path)
				}
				if diskName == "" {
					diskName = diskNameFor(loc.Image)
				}
			} else if baseSnap != "" {
				return usagef("--base-snapshot applies to rbd:POOL/IMAGE@SNAP sources only")
			}
			var lloc *libvirtLocator
			if isLibvirt(path) {
				l, err := parseLibvirtLocator(path)
				if err != nil {
					return err
				}
				if extentsFile != "" {
					return usagef("--changed-extents does not apply to %s: libvirt's dirty bitmaps give the changed extents", path)
				}
				if diskName == "" {
					diskName = l.Target
				}
				lloc = &l
			}
			if diskName == "" {
				diskName = diskNameFor(path)
			} else if !repo.ValidName(diskName) {
				return usagef("--disk-name %q: letters, digits, '.', '_', '-' only", diskName)
			}
			if isRBD(path) {
				rsrc, err = openRBDSnapshot(ctx, a.cephConf(cephConf), loc)
				if err != nil {
					return fmt.Errorf("backup %s: %w", path, err)
				}
				src, abs = rsrc, loc.image()
				checkpoint = &repo.Checkpoint{Kind: "rbd-snapshot", Name: loc.String()}
			} else if lloc != nil {
				abs = path
			} else {
				fsrc, err := file.Open(path)
				if err != nil {
					return err
				}
				src = fsrc
				abs, _ = filepath.Abs(path)
			}
			if src != nil {
				defer src.Close()
			}
			var changed []disk.Extent
			changedKnown := extentsFile != ""
			if extentsFile != "" {
				changed, err = disk.ReadExtentsFile(extentsFile, src.Size())
				if err != nil {
					return usageError{err}
				}
			}
			r, err := a.openRepo(ctx)
			if err != nil {
				return err
			}
			a.phase("repository opened")
			base, err := a.findBase(ctx, r, baseID, lbl, diskName, abs)
			if err != nil {
				return err
			}
			a.phase("base found", "base", base)
			if rsrc != nil && baseSnap != "" {
				changed, changedKnown, err = a.rbdChanged(ctx, r, rsrc, base, rbdLocator{Pool: loc.Pool, Image: loc.Image, Snap: baseSnap})
				if err != nil {
					return err
				}
			}
			var lc *libvirtCopy
			committedOK := false
			if lloc != nil {
				if lc, err = a.beginLibvirt(ctx, r, *lloc, base, lf); err != nil {
					return fmt.Errorf("backup %s: %w", path, err)
				}
				src, changed, changedKnown, checkpoint = lc.src, lc.changed, lc.known, lc.cp
				if lc.mode.Mode == "full" && base != "" {
					a.log.Warn("reading the whole disk", "disk", path, "reason", lc.mode.Reason)
				}
				defer func() {
					if err := lc.finish(context.WithoutCancel(ctx), committedOK); err != nil {
						a.log.Warn("libvirt backup clean-up", "disk", path, "err", err)
					}
				}()
			}
			s, err := r.StartBackup(ctx, repo.BackupSpec{Labels: lbl, Tags: tags, Expires: exp})
			if err != nil {
				return err
			}
			pr := a.newProgress("backup "+diskName, src.Size())
			m, err := s.BackupDisk(ctx, standaloneVM, diskName, src, repo.DiskOptions{
				Name: abs, Base: base, Changed: changed, ChangedKnown: changedKnown, Checkpoint: checkpoint, Progress: pr.update})
			pr.finish()
			if err != nil {
				if aerr := s.Abort(context.WithoutCancel(ctx)); aerr != nil {
					a.log.Warn("could not clean up the failed backup", "err", aerr)
				}
				return err
			}
			a.phase("disk copied")
			b, err := s.Commit(ctx)
			if err != nil {
				if aerr := s.Abort(context.WithoutCancel(ctx)); aerr != nil {
					a.log.Warn("could not clean up the failed backup", "err", aerr)
				}
				return err
			}
			committedOK = true
			a.phase("committed")
			res := diskBackupResult{ID: b.ID, Disk: m.ID, Base: m.Base, Labels: lbl, Stats: m.Stats}
			if m.Checkpoint != nil {
				res.Mode, res.Reason = m.Checkpoint.Mode, m.Checkpoint.Reason
			}
			if a.format == "json" {
				return a.printJSON(res)
			}
			fmt.Fprintln(a.stdout, b.ID)
			st := m.Stats
			baseMsg := "full read (no base)"
			if m.Base != "" {
				baseMsg = "base " + m.Base
			}
			fmt.Fprintf(a.stderr, "%s: %s in %.1fs; read %s, new %s (stored %s), reused %s, %d holes\n",
				m.ID, baseMsg, st.Seconds, humanBytes(st.BytesRead), humanBytes(st.BytesNew), humanBytes(st.BytesStored),
				humanBytes(st.BytesReused), st.Holes)
			return nil
		},
	}
	f := c.Flags()
	f.StringArrayVar(&labels, "label", nil, "label key=value, repeatable; the label set also picks the default base")
	f.StringArrayVar(&tags, "tag", nil, "tag, repeatable")
	f.StringVar(&extentsFile, "changed-extents", "", "JSON file with the byte ranges changed since the base")
	f.StringVar(&baseID, "base", "", "backup id to diff against (default: the newest backup with the same labels)")
	f.StringVar(&expires, "expires", "", "expiry: a date, an RFC 3339 time or a duration such as 30d")
	f.StringVar(&diskName, "disk-name", "", "disk name in the manifest (default: from the file or RBD image name)")
	f.StringVar(&baseSnap, "base-snapshot", "", "rbd: the RBD snapshot the base backup was taken from (diff base)")
	f.StringVar(&cephConf, "ceph-conf", "", "rbd: ceph.conf of the cluster (default: $CEPH_CONF, then librados' default)")
	f.StringVar(&lf.uri, "libvirt-uri", libvirt.DefaultURI, "libvirt: the libvirt URI of the host that runs the domain (local only)")
	f.StringVar(&lf.lockDir, "lock-dir", libvirt.DefaultLockDir, "libvirt: directory of the guests' lock files (the host worker's)")
	f.StringVar(&lf.workDir, "work-dir", libvirt.DefaultWorkDir, "libvirt: directory for the backup job's socket and scratch files")
	f.BoolVar(&lf.noFreeze, "no-freeze", false, "libvirt: do not freeze the guest (crash-consistent)")
	f.DurationVar(&lf.freezeTimeout, "freeze-timeout", 30*time.Second, "libvirt: the guest is thawed by then at the latest")
	return c
}

// rbdChanged returns the extents changed between the base snapshot and the
// snapshot being backed up, if base (a disk manifest id, or "") was taken
// from exactly baseLoc; otherwise it warns and asks for a full read.
func (a *app) rbdChanged(ctx context.Context, r *repo.Repository, src rbdSource, base string, baseLoc rbdLocator) ([]disk.Extent, bool, error) {
	if base == "" {
		a.log.Warn("no base backup of this disk: reading the whole snapshot", "base_snapshot", baseLoc.String())
		return nil, false, nil
	}
	m, err := r.LoadManifest(ctx, base)
	if err != nil {
		a.log.Warn("base manifest unreadable: reading the whole snapshot", "base", base, "err", err)
		return nil, false, nil
	}
	if cp := m.Checkpoint; cp == nil || cp.Kind != "rbd-snapshot" || cp.Name != baseLoc.String() {
		got := "none"
		if cp != nil {
			got = cp.Kind + " " + cp.Name
		}
		a.log.Warn("the base backup was not taken from --base-snapshot: reading the whole snapshot (only changed chunks are stored)",
			"base", base, "base_checkpoint", got, "base_snapshot", baseLoc.String())
		return nil, false, nil
	}
	exts, noBase, err := src.Changed(baseLoc.Snap)
	if noBase {
		a.log.Warn("base snapshot unusable: reading the whole snapshot", "err", err)
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return exts, true, nil
}

// restoreRBD restores a disk into a new RBD image, or with overwrite into an
// existing one of the same size in place (holes written as zeros).
func (a *app) restoreRBD(ctx context.Context, r *repo.Repository, id string, ref *repo.DiskRef, arg, cephConf string, overwrite bool) error {
	loc, err := parseRBDLocator(arg, false)
	if err != nil {
		return err
	}
	w, closer, existed, err := openRBDTarget(ctx, a.cephConf(cephConf), loc, ref.Size, overwrite)
	if err != nil {
		var u usageError
		if errors.As(err, &u) {
			return err
		}
		return fmt.Errorf("restore target %s: %w", arg, err)
	}
	pr := a.newProgress("restore "+ref.Disk, ref.Size)
	st, err := r.RestoreDisk(ctx, ref.ID, w, repo.RestoreOptions{ZeroHoles: existed, Progress: pr.update})
	pr.finish()
	if cerr := closer.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("restore target %s: %w", arg, cerr)
	}
	if err != nil {
		if !existed {
			return fmt.Errorf("%w (the new image %s is incomplete: remove it with 'rbd rm %s')", err, loc, loc)
		}
		return err
	}
	if a.format == "json" {
		return a.printJSON(map[string]any{"backup": id, "disk": ref.ID, "path": arg, "in_place": existed, "stats": st})
	}
	fmt.Fprintf(a.stdout, "restored %s to %s: %s in %.1fs (%s/s), %d chunks fetched, %d holes\n",
		ref.ID, arg, humanBytes(ref.Size), st.Seconds, humanBytes(int64(float64(ref.Size)/max(st.Seconds, 1e-3))), st.Chunks, st.Holes)
	return nil
}

// findBase returns the disk manifest id to diff against, or "".
func (a *app) findBase(ctx context.Context, r *repo.Repository, baseID string, labels map[string]string, diskName, path string) (string, error) {
	var b *repo.Backup
	var err error
	if baseID != "" {
		b, err = r.LoadBackup(ctx, baseID)
		if err != nil {
			return "", fmt.Errorf("--base: %w", err)
		}
	} else {
		b, err = r.LatestWithLabels(ctx, labels)
		if err != nil || b == nil {
			return "", err
		}
	}
	for _, d := range b.Disks {
		if d.VM != standaloneVM || d.Disk != diskName {
			continue
		}
		m, err := r.LoadManifest(ctx, d.ID)
		if err != nil {
			a.log.Warn("base manifest unreadable, reading the whole disk", "base", d.ID, "err", err)
			return "", nil
		}
		if m.Name != path && baseID == "" {
			a.log.Warn("newest backup with these labels is of another source path; reading the whole disk",
				"base", d.ID, "base_path", m.Name, "path", path)
			return "", nil
		}
		return d.ID, nil
	}
	if baseID != "" {
		return "", usagef("--base %s has no disk %q (it has %d disks)", baseID, diskName, len(b.Disks))
	}
	return "", nil
}

func (a *app) diskRestoreCmd() *cobra.Command {
	var diskSel, cephConf string
	var overwrite bool
	c := &cobra.Command{
		Use:   "restore --repo URL BACKUP_ID PATH|rbd:POOL/IMAGE",
		Short: "Restore a disk of a backup into a new sparse file, onto a block device, or into a new RBD image",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			id, path := args[0], args[1]
			r, err := a.openRepo(ctx)
			if err != nil {
				return err
			}
			b, err := r.LoadBackup(ctx, id)
			if err != nil {
				return err
			}
			var ref *repo.DiskRef
			for i, d := range b.Disks {
				if diskSel == "" && len(b.Disks) == 1 || diskSel == d.Disk || diskSel == d.VM+"/"+d.Disk || diskSel == d.ID {
					ref = &b.Disks[i]
				}
			}
			if ref == nil {
				var names []string
				for _, d := range b.Disks {
					names = append(names, d.VM+"/"+d.Disk)
				}
				return usagef("backup %s has disks %v: choose one with --disk VM/DISK", id, names)
			}
			if isRBD(path) {
				return a.restoreRBD(ctx, r, id, ref, path, cephConf, overwrite)
			}
			fi, statErr := os.Stat(path)
			isDev := statErr == nil && fi.Mode()&os.ModeDevice != 0
			var f *os.File
			switch {
			case isDev:
				f, err = os.OpenFile(path, os.O_WRONLY, 0)
			case statErr == nil && !overwrite:
				return usagef("%s exists; restore into a new path or pass --overwrite", path)
			default:
				f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			}
			if err != nil {
				return fmt.Errorf("restore target: %w", err)
			}
			if !isDev {
				if err := f.Truncate(ref.Size); err != nil {
					f.Close()
					return fmt.Errorf("restore target %s: %w", path, err)
				}
			}
			pr := a.newProgress("restore "+ref.Disk, ref.Size)
			dw := repo.NewDirectWriter(f)
			st, err := r.RestoreDisk(ctx, ref.ID, dw, repo.RestoreOptions{ZeroHoles: isDev, Progress: pr.update})
			if err == nil {
				// restored means on the disk, not in a cache
				if serr := dw.Sync(); serr != nil {
					err = fmt.Errorf("restore target %s: %w", path, serr)
				}
			}
			pr.finish()
			if cerr := dw.Close(); err == nil && cerr != nil {
				err = fmt.Errorf("restore target %s: %w", path, cerr)
			}
			if cerr := f.Close(); err == nil && cerr != nil {
				err = fmt.Errorf("restore target %s: %w", path, cerr)
			}
			if err != nil {
				if !isDev && statErr != nil {
					_ = os.Remove(path) // a half-written new file helps nobody
				}
				return err
			}
			if a.format == "json" {
				return a.printJSON(map[string]any{"backup": id, "disk": ref.ID, "path": path, "stats": st})
			}
			fmt.Fprintf(a.stdout, "restored %s to %s: %s in %.1fs (%s/s), %d chunks fetched, %d holes\n",
				ref.ID, path, humanBytes(ref.Size), st.Seconds, humanBytes(int64(float64(ref.Size)/max(st.Seconds, 1e-3))), st.Chunks, st.Holes)
			return nil
		},
	}
	c.Flags().StringVar(&diskSel, "disk", "", "which disk (VM/DISK or DISK) when the backup has several")
	c.Flags().BoolVar(&overwrite, "overwrite", false, "replace an existing file; rbd: restore in place into an existing image of the same size")
	c.Flags().StringVar(&cephConf, "ceph-conf", "", "rbd: ceph.conf of the cluster (default: $CEPH_CONF, then librados' default)")
	return c
}
