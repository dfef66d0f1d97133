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
	// FSType is "ext" (read by raksha's own reader) or "xfs" (loop-mounted).
	FSType string `json:"fs_type"`
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
	c := &cobra.Command{
		Use:   "files --repo URL BACKUP --vm VM --disk DISK [--partition N] --path PATH --to DIR",
		Short: "Copy files or a directory tree out of a backed-up ext4 or XFS disk, fetching only the chunks needed",
		Long: `Copy a file, symlink or directory tree out of an ext2/3/4 or XFS file system
on a backed-up disk into DIR, without restoring the disk. Only the chunks the
file system reads touch are fetched.

ext2/3/4 is read by raksha itself. XFS is loop-mounted by the kernel,
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
			if filerestore.IsXFS(vol) {
				res.FSType = "xfs"
				st, err = a.extractXFS(ctx, vol, "raksha:"+ref.ID, path, to, "restore files from "+where)
			} else {
				st, err = filerestore.Extract(ctx, vol, vol.Size, path, to)
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
			fmt.Fprintf(a.stdout, "restored %s from %s to %s: %d files (%s), %d directories, %d symlinks",
				path, ref.ID, to, st.Files, humanBytes(st.Bytes), st.Dirs, st.Symlinks)
			if len(st.Skipped) > 0 {
				fmt.Fprintf(a.stdout, ", %d skipped", len(st.Skipped))
			}
			fmt.Fprintf(a.stdout, "\nfetched %d of %d chunks (%s of a %s disk)\n",
				res.Fetch.ChunksFetched, m.Chunks, humanBytes(res.Fetch.BytesFetched), humanBytes(m.Size))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&vm, "vm", "", `VM name in the backup ("local" for 'raksha disk backup'); optional when one disk matches`)
	f.StringVar(&diskSel, "disk", "", "disk name (or VM/DISK); optional when the backup has one disk")
	f.IntVar(&partition, "partition", 0, "partition number (1-based); default: the only Linux file-system partition, or the whole disk")
	f.StringVar(&path, "path", "", "file or directory in the backed-up file system, e.g. /etc/app/")
	f.StringVar(&to, "to", "", "local directory to write into (created if missing)")
	return c
}

// extractXFS copies path out of the XFS file system on vol: loop-mounted
// read-only at a private directory, unmounted and detached before it
// returns, whatever happened.
func (a *app) extractXFS(ctx context.Context, vol *filerestore.Volume, source, path, to, what string) (st filerestore.Stats, err error) {
	if err := loopfs.Check("xfs"); err != nil {
		return st, xfsUnavailable(what, err)
	}
	m, err := loopfs.Open(vol, vol.Size, "xfs", "", loopfs.Options{Source: source, Log: a.log})
	if err != nil {
		return st, err
	}
	defer func() {
		if cerr := m.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	a.log.Debug("XFS loop-mounted", "device", m.Device, "dir", m.Dir, "options", m.Options, "replayed", m.Replayed)
	if m.RecoveryErr != nil {
		fmt.Fprintf(a.stderr, "warning: %s: %s\n", what, xfsLogNote(m))
	}
	return loopfs.Extract(ctx, m.Dir, path, to)
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
