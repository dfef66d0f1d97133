package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/raksha-backup/raksha/internal/appliance"
	"github.com/raksha-backup/raksha/internal/filerestore"
	"github.com/raksha-backup/raksha/internal/loopfs"
	"github.com/raksha-backup/raksha/internal/repo"
)

func (a *app) restoreCmd() *cobra.Command {
	c := &cobra.Command{Use: "restore", Short: "Restore from backups: workloads, servers, volumes (workflows) and single files"}
	c.AddCommand(a.restoreFilesCmd(), viaAPI(a.restoreStartCmd()), viaAPI(a.restoreListCmd("restore")), viaAPI(a.restoreShowCmd()), viaAPI(a.restoreCancelCmd("restore")))
	return c
}

// restoreFilesResult is what 'raksha restore files' prints with -f json.
type restoreFilesResult struct {
	Backup string `json:"backup"`
	Disk   string `json:"disk"`
	Path   string `json:"path"`
	To     string `json:"to"`
	// Partition is the partition read, when the disk has a partition table.
	Partition *filerestore.Partition `json:"partition,omitempty"`
	// FSType is "ext" (read by raksha's own reader, or loop-mounted when
	// its journal needs recovery: see Replay) or "xfs" (loop-mounted).
	FSType string `json:"fs_type"`
	// Replay says what became of an ext3/4 journal that needs recovery
	// (Stats.NeedsRecovery): "kernel" (replayed by the kernel into a
	// private overlay, OverlayBytes written there, none to the backup),
	// "failed" (the mount with replay failed, it was mounted with noload),
	// or "skipped" (read by raksha's reader without it; ReplayNote says
	// why). Empty when there was nothing to replay.
	Replay       string `json:"replay,omitempty"`
	ReplayNote   string `json:"replay_note,omitempty"`
	OverlayBytes int64  `json:"overlay_bytes,omitempty"`
	// MountIn is where a kernel mounted the file system: "appliance" (a
	// throwaway QEMU guest; Appliance says what it took) or "host". Empty
	// when raksha's own reader read it.
	MountIn   string         `json:"mount_in,omitempty"`
	Appliance *applianceCost `json:"appliance,omitempty"`
	filerestore.Stats
	// Fetch counts what was read from the repository.
	Fetch      repo.ReaderStats `json:"fetch"`
	DiskChunks int64            `json:"disk_chunks"`
	DiskSize   int64            `json:"disk_size"`
	ChunkSize  int              `json:"chunk_size"`
}

func (a *app) restoreFilesCmd() *cobra.Command {
	var vm, diskSel, path, to string
	var partition int
	var noReplay bool
	var xopts filerestore.ExtractOptions
	var km kernelMount
	c := &cobra.Command{
		Use:   "files --repo URL BACKUP --vm VM --disk DISK [--partition N] [--no-replay] [--mount-in appliance|host] --path PATH --to DIR",
		Short: "Copy files or a directory tree out of a backed-up ext4 or XFS disk, fetching only the chunks needed",
		Long: `Copy a file, symlink or directory tree out of an ext2/3/4 or XFS file system
on a backed-up disk into DIR, without restoring the disk. Only the chunks the
file system reads touch are fetched.

ext2/3/4 is read by raksha itself, in user space. What raksha does not
read needs a kernel: XFS, and ext4 whose journal needs recovery (a
crash-consistent backup: the guest was not frozen, and files written and
synced just before the snapshot may live in the journal only). The disk is
the tenant's, and a kernel parsing a crafted file system runs the
tenant's bytes through its most privileged code, so by default
(--mount-in appliance) that kernel is not this host's: a throwaway QEMU
guest (the appliance: a kernel and a small initramfs built by
scripts/build-appliance.sh, found in --appliance DIR or $RAKSHA_APPLIANCE)
gets the disk read-only behind a copy-on-write snapshot, mounts it with
its own kernel (a dirty log or journal replayed into the snapshot, never
into the backup; if that fails, without it, with a warning), and sends the
files back as a tar that raksha unpacks with the rules below, trusting
none of it. The appliance has no network and 256 MiB, uses KVM where
/dev/kvm works (TCG otherwise, much slower to boot), and is killed and
removed whatever happens. --mount-in host loop-mounts the file system in
this host's kernel instead (root, the loop driver, the file system in the
kernel): faster to start, but the host's kernel parses the tenant's
image. Both read the disk through a private FUSE view (fusermount3).

When the appliance cannot run here (no image, no QEMU, no FUSE) an ext4
journal is not replayed: raksha's reader reads the file system without it
and warns that recent writes may be missing, as with --no-replay; an XFS
disk is refused with what is missing. An application-consistent backup
needs no replay.

PATH /etc/app lands as DIR/app; PATH / copies the whole file system into DIR.
Permission bits and modification times are kept; symlinks are written as
symlinks and never followed; nothing is written outside DIR, and entries with
unsafe names are skipped and listed. Existing files are not overwritten.
Disks of 'raksha disk backup' have VM "local". On a disk with a GPT or MBR
partition table the only Linux file-system partition is read, or the one
--partition N names (1-based, as Linux numbers them).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			id := args[0]
			if path == "" || to == "" {
				return usagef("give --path (in the backup) and --to (a local directory)")
			}
			if km.in != mountInAppliance && km.in != mountInHost {
				return usagef("--mount-in %q: want appliance or host", km.in)
			}
			if partition < 0 {
				return usagef("--partition %d: partitions are numbered from 1", partition)
			}
			r, err := a.openRepo(ctx)
			if err != nil {
				return err
			}
			b, err := r.LoadBackup(ctx, id)
			if err != nil {
				return err
			}
			ref, err := pickDisk(b, vm, diskSel)
			if err != nil {
				return err
			}
			// an XFS volume is read through a FUSE view until it is
			// unmounted, also after a cancel
			d, err := r.OpenDisk(context.WithoutCancel(ctx), ref.ID, repo.ReaderOptions{})
			if err != nil {
				return err
			}
			res := restoreFilesResult{Backup: id, Disk: ref.ID, Path: path, To: to, FSType: "ext"}
			where := fmt.Sprintf("backup %s vm %s disk %s", id, ref.VM, ref.Disk)
			vol, err := openVolume(d, d.Size(), partition, "restore files from "+where)
			if err != nil {
				return err
			}
			if vol.Partition != nil {
				where += fmt.Sprintf(" partition %d", vol.Partition.Number)
				res.Partition = vol.Partition
			}
			var st filerestore.Stats
			if xopts.MaxBytes == 0 {
				// No file system holds more data than twice its disk
				// (XFS shares extents between files; ext does not).
				xopts.MaxBytes = 2 * max(vol.Size, 1<<30)
			}
			if filerestore.IsXFS(vol) {
				res.FSType = "xfs"
				if err := km.check("xfs"); err != nil {
					return xfsUnavailable("restore files from "+where, km.in, err)
				}
				var o kernelOutcome
				o, err = a.extractKernel(ctx, km, vol, "xfs", "raksha:"+ref.ID, path, to, xopts)
				st, res.MountIn, res.Appliance = o.st, km.in, o.appliance
				if o.recoveryErr != "" {
					fmt.Fprintf(a.stderr, "warning: restore files from %s: log NOT replayed (mounting with it failed: %s): what changed shortly before the backup may be missing\n", where, o.recoveryErr)
				}
			} else {
				st, err = a.extractExt(ctx, km, vol, "raksha:"+ref.ID, path, to, where, noReplay, xopts, &res)
			}
			if err != nil {
				return fmt.Errorf("restore files from %s: %w", where, err)
			}
			m := d.Manifest()
			res.Stats, res.Fetch, res.DiskChunks, res.DiskSize, res.ChunkSize = st, d.Stats(), m.Chunks, m.Size, m.ChunkSize
			if a.format == "json" {
				return a.printJSON(res)
			}
			for _, s := range st.Skipped {
				fmt.Fprintf(a.stderr, "skipped %s\n", s)
			}
			if st.SpecialBitsStripped > 0 {
				fmt.Fprintf(a.stderr, "warning: setuid, setgid or sticky bits stripped from %d entries (--keep-special-bits keeps them)\n", st.SpecialBitsStripped)
			}
			fmt.Fprintf(a.stdout, "restored %s from %s to %s: %d files (%s), %d directories, %d symlinks",
				path, ref.ID, to, st.Files, humanBytes(st.Bytes), st.Dirs, st.Symlinks)
			if len(st.Skipped) > 0 {
				fmt.Fprintf(a.stdout, ", %d skipped", len(st.Skipped))
			}
			fmt.Fprintf(a.stdout, "\nfetched %d of %d chunks (%s of a %s disk)\n",
				res.Fetch.ChunksFetched, m.Chunks, humanBytes(res.Fetch.BytesFetched), humanBytes(m.Size))
			if res.Replay == "kernel" {
				by := "the kernel"
				if res.MountIn == mountInAppliance {
					by = "the appliance's kernel"
				}
				fmt.Fprintf(a.stdout, "the ext4 journal needed recovery: replayed by %s into a private overlay (%s written there, none to the backup)\n", by, humanBytes(res.OverlayBytes))
			}
			if ac := res.Appliance; ac != nil {
				fmt.Fprintf(a.stdout, "mounted in the appliance (%s, %s): up in %.1fs, done in %.1fs, QEMU peak memory %s\n",
					ac.Accel, ac.Options, float64(ac.BootMs)/1000, float64(ac.DurationMs)/1000, humanBytes(ac.PeakRSS))
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&vm, "vm", "", `VM name in the backup ("local" for 'raksha disk backup'); optional when one disk matches`)
	f.StringVar(&diskSel, "disk", "", "disk name (or VM/DISK); optional when the backup has one disk")
	f.IntVar(&partition, "partition", 0, "partition number (1-based); default: the only Linux file-system partition, or the whole disk")
	f.StringVar(&path, "path", "", "file or directory in the backed-up file system, e.g. /etc/app/")
	f.StringVar(&to, "to", "", "local directory to write into (created if missing)")
	f.BoolVar(&xopts.KeepSpecialBits, "keep-special-bits", false, "keep setuid, setgid and sticky bits (stripped by default: restored files belong to whoever runs the restore)")
	f.Int64Var(&xopts.MaxEntries, "max-files", filerestore.DefaultMaxEntries, "stop after writing this many files, directories and links")
	f.Int64Var(&xopts.MaxBytes, "max-bytes", 0, "stop after writing this many bytes of file data (default: twice the file system's disk, at least 2 GiB)")
	f.BoolVar(&noReplay, "no-replay", false, "read an ext4 file system with raksha's reader even if its journal needs recovery (no kernel mount; recent writes may be missing)")
	f.StringVar(&km.in, "mount-in", mountInAppliance, "where a file system that needs a kernel (XFS; ext4 whose journal needs recovery) is mounted: appliance (a throwaway QEMU guest's kernel) or host (this host's kernel: root, loop devices)")
	f.StringVar(&km.applianceDir, "appliance", "", "directory of the appliance's vmlinuz and initrd.gz (scripts/build-appliance.sh prints it as dir=; default $"+appliance.EnvDir+")")
	return c
}

// extractLoop copies path out of the fstype file system on vol:
// loop-mounted read-only at a private directory (a dirty log or journal
// replayed into a private overlay), unmounted and detached before it
// returns, whatever happened. The mount is returned for its notes (nil if
// it failed).
func (a *app) extractLoop(ctx context.Context, vol *filerestore.Volume, fstype, source, path, to string, xopts filerestore.ExtractOptions) (st filerestore.Stats, m *loopfs.Mount, err error) {
	m, err = loopfs.Open(vol, vol.Size, fstype, "", loopfs.Options{Source: source, Log: a.log})
	if err != nil {
		return st, nil, err
	}
	defer func() {
		if cerr := m.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	a.log.Debug("loop-mounted", "fstype", fstype, "device", m.Device, "dir", m.Dir, "options", m.Options, "replayed", m.Replayed)
	st, err = loopfs.Extract(ctx, m.Dir, path, to, xopts)
	return st, m, err
}

// extractExt copies path out of the ext2/3/4 file system on vol (where
// names it): with raksha's reader, or, when its journal needs recovery and
// neither noReplay nor the host prevents it, mounted by a kernel (km: the
// appliance's or this host's) that replays the journal into a private
// overlay. What became of the journal goes into res and, when it was not
// replayed, a warning.
func (a *app) extractExt(ctx context.Context, km kernelMount, vol *filerestore.Volume, source, path, to, where string, noReplay bool, xopts filerestore.ExtractOptions, res *restoreFilesResult) (filerestore.Stats, error) {
	what := "restore files from " + where
	j, jerr := filerestore.ReadJournal(vol, vol.Size)
	if jerr == nil && j.NeedsRecovery {
		why := replayBlocker(j, noReplay, km.check)
		if why == "" {
			o, err := a.extractKernel(ctx, km, vol, "ext4", source, path, to, xopts)
			st := o.st
			st.Journal, st.NeedsRecovery = j.Kind, true
			res.MountIn, res.Appliance = km.in, o.appliance
			res.Replay, res.OverlayBytes = "kernel", o.replayed
			if o.recoveryErr != "" {
				res.Replay, res.ReplayNote = "failed", o.recoveryErr
				w := journalNotReplayed(j, "mounting with it failed: "+o.recoveryErr)
				st.Warnings = append(st.Warnings, w)
				fmt.Fprintf(a.stderr, "warning: %s: %s\n", what, w)
			}
			return st, err
		}
		res.Replay, res.ReplayNote = "skipped", why
		fmt.Fprintf(a.stderr, "warning: %s: %s\n", what, journalNotReplayed(j, why))
	}
	return filerestore.Extract(ctx, vol, vol.Size, path, to, xopts)
}

// replayBlocker says why the journal j, which needs recovery, cannot be
// replayed here ("" when it can): --no-replay, an external journal (not in
// the backup), or kernel mounts of ext4 unavailable (check).
func replayBlocker(j filerestore.Journal, noReplay bool, check func(fstype string) error) string {
	switch {
	case noReplay:
		return "--no-replay given"
	case j.Kind == "external":
		return "the journal is on an external device, which is not in the backup"
	case j.Kind == "":
		return "the file system has no journal to replay"
	}
	if err := check("ext4"); err != nil {
		return err.Error()
	}
	return ""
}

// journalNotReplayed is the warning for a journal that needs recovery and
// was not replayed, and why.
func journalNotReplayed(j filerestore.Journal, why string) string {
	return fmt.Sprintf("%s (not replayed: %s)", j.Warning(), why)
}

// xfsLogNote says what became of an XFS mount's log.
func xfsLogNote(m *loopfs.Mount) string {
	switch {
	case m.RecoveryErr != nil:
		return fmt.Sprintf("log NOT replayed (mounting with it failed: %v): what changed shortly before the backup may be missing", m.RecoveryErr)
	case m.Replayed > 0:
		return fmt.Sprintf("log recovered into a private overlay (%s written there, none to the backup)", humanBytes(m.Replayed))
	default:
		return "log clean (nothing written)"
	}
}

// xfsUnavailable says why an XFS volume cannot be read here (mounted in
// mountIn: "appliance", "host"; "" for 'raksha mount', which mounts on the
// host), and the way around it.
func xfsUnavailable(what, mountIn string, err error) error {
	if mountIn == mountInAppliance {
		return fmt.Errorf("%s: the disk holds an XFS file system, which raksha reads by mounting it in the appliance: %w; "+
			"or give --mount-in host to loop-mount it in this host's kernel (root; the host's kernel then parses the tenant's image)", what, err)
	}
	return fmt.Errorf("%s: the disk holds an XFS file system, which raksha reads by loop-mounting it: %w; "+
		"instead serve the disk with 'raksha mount --raw' and loop-mount its partN.img (or disk.img) read-only where XFS mounts work", what, err)
}

// pickDisk finds the one disk of b that --vm and --disk (DISK or VM/DISK) select.
func pickDisk(b *repo.Backup, vm, diskSel string) (*repo.DiskRef, error) {
	if v, d, ok := strings.Cut(diskSel, "/"); ok {
		if vm != "" && vm != v {
			return nil, usagef("--vm %s and --disk %s name different VMs", vm, diskSel)
		}
		vm, diskSel = v, d
	}
	var found []*repo.DiskRef
	var names []string
	for i, d := range b.Disks {
		names = append(names, d.VM+"/"+d.Disk)
		if (vm == "" || vm == d.VM) && (diskSel == "" || diskSel == d.Disk) {
			found = append(found, &b.Disks[i])
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) == 0:
		return nil, usagef("backup %s has no disk matching --vm %q --disk %q; it has %v", b.ID, vm, diskSel, names)
	default:
		return nil, usagef("backup %s has several disks matching --vm %q --disk %q (%v): choose one with --vm and --disk", b.ID, vm, diskSel, names)
	}
}
