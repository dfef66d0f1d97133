package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/raksha-backup/raksha/internal/filerestore"
	"github.com/raksha-backup/raksha/internal/loopfs"
	"github.com/raksha-backup/raksha/internal/repo"
)

func (a *app) restoreCmd() *cobra.Command {
	c := &cobra.Command{Use: "restore", Short: "Restore from backups: workloads, servers, volumes (workflows) and single files"}
	c.AddCommand(a.restoreFilesCmd(), a.restoreStartCmd(), a.restoreListCmd("restore"), a.restoreShowCmd(), a.restoreCancelCmd("restore"))
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
	c := &cobra.Command{
		Use:   "files --repo URL BACKUP --vm VM --disk DISK [--partition N] [--no-replay] --path PATH --to DIR",
		Short: "Copy files or a directory tree out of a backed-up ext4 or XFS disk, fetching only the chunks needed",
		Long: `Copy a file, symlink or directory tree out of an ext2/3/4 or XFS file system
on a backed-up disk into DIR, without restoring the disk. Only the chunks the
file system reads touch are fetched.

ext2/3/4 is read by raksha itself, unless its journal needs recovery (a
crash-consistent backup: the guest was not frozen, and files written and
synced just before the snapshot may live in the journal only): then it is
loop-mounted by the kernel as XFS is, which replays the journal into a
private overlay, never into the backup. Where loop mounts cannot work
(below), or with --no-replay, raksha's reader reads it without the journal
and warns that recent writes may be missing; an application-consistent
backup avoids this.

XFS is loop-mounted by the kernel,
read-only, from a private FUSE view of the disk; a dirty log (a
crash-consistent backup) is replayed into a private overlay, never into the
backup (if that fails, the file system is mounted without it, with a
warning). That needs root, the loop driver, XFS in the kernel and FUSE
(fusermount3), and everything is unmounted and detached when the command
ends, also on Ctrl-C. Where that cannot work, the error says what is
missing: serve the disk with 'raksha mount --raw' and loop-mount it
elsewhere.

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
				if err := loopfs.Check("xfs"); err != nil {
					return xfsUnavailable("restore files from "+where, err)
				}
				var m *loopfs.Mount
				st, m, err = a.extractLoop(ctx, vol, "xfs", "raksha:"+ref.ID, path, to, xopts)
				if m != nil && m.RecoveryErr != nil {
					fmt.Fprintf(a.stderr, "warning: restore files from %s: %s\n", where, xfsLogNote(m))
				}
			} else {
				st, err = a.extractExt(ctx, vol, "raksha:"+ref.ID, path, to, where, noReplay, xopts, &res)
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
				fmt.Fprintf(a.stdout, "the ext4 journal needed recovery: replayed by the kernel into a private overlay (%s written there, none to the backup)\n", humanBytes(res.OverlayBytes))
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
	f.BoolVar(&noReplay, "no-replay", false, "read an ext4 file system with raksha's reader even if its journal needs recovery (no loop mount; recent writes may be missing)")
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
// neither noReplay nor the host prevents it, through a kernel loop mount
// that replays the journal into a private overlay. What became of the
// journal goes into res and, when it was not replayed, a warning.
func (a *app) extractExt(ctx context.Context, vol *filerestore.Volume, source, path, to, where string, noReplay bool, xopts filerestore.ExtractOptions, res *restoreFilesResult) (filerestore.Stats, error) {
	what := "restore files from " + where
	j, jerr := filerestore.ReadJournal(vol, vol.Size)
	if jerr == nil && j.NeedsRecovery {
		why := replayBlocker(j, noReplay, loopfs.Check)
		if why == "" {
			st, m, err := a.extractLoop(ctx, vol, "ext4", source, path, to, xopts)
			st.Journal, st.NeedsRecovery = j.Kind, true
			if m != nil {
				res.Replay, res.OverlayBytes = "kernel", m.Replayed
				if m.RecoveryErr != nil {
					res.Replay, res.ReplayNote = "failed", m.RecoveryErr.Error()
					w := journalNotReplayed(j, "mounting with it failed: "+m.RecoveryErr.Error())
					st.Warnings = append(st.Warnings, w)
					fmt.Fprintf(a.stderr, "warning: %s: %s\n", what, w)
				}
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
// the backup), or kernel loop mounts of ext4 unavailable (check).
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

// xfsUnavailable says why an XFS volume cannot be read here, and the way
// around it.
func xfsUnavailable(what string, err error) error {
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
