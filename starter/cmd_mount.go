package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/raksha-backup/raksha/internal/filerestore"
	"github.com/raksha-backup/raksha/internal/loopfs"
	"github.com/raksha-backup/raksha/internal/mountfs"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend"
)

// mountResult is what 'raksha mount' prints with -f json once unmounted.
type mountResult struct {
	Backup    string                 `json:"backup"`
	Disk      string                 `json:"disk"`
	Partition *filerestore.Partition `json:"partition,omitempty"`
	Raw       bool                   `json:"raw"`
	// FSType is "ext" (served by raksha, or loop-mounted when its journal
	// needs recovery: see Replay) or "xfs" (loop-mounted), "" raw.
	FSType string `json:"fs_type,omitempty"`
	// NeedsRecovery: the ext3/4 journal holds transactions not replayed
	// into the file system. Replay says what became of them: "kernel"
	// (replayed by the kernel into a private overlay, OverlayBytes written
	// there, none to the backup), "failed" (mounted with noload after the
	// mount with replay failed) or "skipped" (served by raksha's reader
	// without them; ReplayNote says why).
	NeedsRecovery bool   `json:"needs_recovery,omitempty"`
	Replay        string `json:"replay,omitempty"`
	ReplayNote    string `json:"replay_note,omitempty"`
	OverlayBytes  int64  `json:"overlay_bytes,omitempty"`
	Dir           string `json:"dir"`
	// MountSeconds is the time from the command's start to the mount
	// being served; ServedSeconds how long it was mounted.
	MountSeconds  float64 `json:"mount_seconds"`
	ServedSeconds float64 `json:"served_seconds"`
	// Fetch counts what was read from the repository.
	Fetch      repo.ReaderStats `json:"fetch"`
	DiskChunks int64            `json:"disk_chunks"`
	DiskSize   int64            `json:"disk_size"`
	ChunkSize  int              `json:"chunk_size"`
}

func (a *app) mountCmd() *cobra.Command {
	var vm, diskSel string
	var partition, cacheChunks int
	var raw, noReplay bool
	c := &cobra.Command{
		Use:   "mount --repo URL BACKUP [--vm VM] [--disk DISK] [--partition N] [--raw] [--no-replay] DIR",
		Short: "Mount a backed-up disk's files read-only at DIR (FUSE), fetching chunks as they are read",
		Long: `Serve the ext2/3/4 or XFS file system of a backed-up disk read-only at DIR
until it is unmounted: with Ctrl-C (or SIGTERM), 'raksha umount DIR' or
'fusermount3 -u DIR' (XFS: 'umount DIR'). Only the chunks that reads touch
are fetched.

ext2/3/4 is served by raksha itself (FUSE). XFS is loop-mounted by the
kernel at DIR, read-only, from a private FUSE view of the disk (a dirty
log is replayed into a private overlay, never into the backup): that needs
root, the loop driver and XFS in the kernel; its files keep the file
system's own permissions, as on any local mount (not what is said below of
ext4 mounts); the loop device and the view go when it is unmounted.

An ext4 file system whose journal needs recovery (a crash-consistent
backup: files written and synced just before the snapshot may live in the
journal only) is loop-mounted the same way, so that the kernel replays
the journal into the private overlay (unmount it with 'umount DIR' too).
Where loop mounts cannot work, or with --no-replay, raksha serves it
without the journal and warns that recent writes may be missing; an
application-consistent backup avoids this.

A disk with a GPT or MBR partition table: the only Linux file-system
partition is mounted, or the one --partition N names (1-based, as Linux
numbers them; logical MBR partitions start at 5).

--raw serves the disk image itself instead, as DIR/disk.img, and each
partition as DIR/partN.img: for file systems raksha does not read (LVM, or
XFS where raksha cannot loop-mount), loop-mount them yourself, e.g.
mount -o ro,loop DIR/part1.img /mnt.

ext2/3/4 files keep their owners, modes and times. Only the user who mounted it can
enter the mount, and that user can read every file in it whatever its owner
and mode (no permission checks), as with a restore. Writes fail with "read-only file system". Needs /dev/fuse and fusermount3
(Debian package fuse3). The command stays in the foreground while mounted.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			start := time.Now()
			id, dir := args[0], args[1]
			if raw && partition != 0 {
				return usagef("--raw serves the whole disk and every partition (as partN.img): leave out --partition")
			}
			if partition < 0 {
				return usagef("--partition %d: partitions are numbered from 1", partition)
			}
			if fi, err := os.Stat(dir); errors.Is(err, syscall.ENOTCONN) || err == nil && deadMount(dir) {
				return usagef("mount point %s: a FUSE mount whose process has died: run 'raksha umount %s' first", dir, dir)
			} else if err != nil {
				return usagef("mount point: %v", err)
			} else if !fi.IsDir() {
				return usagef("mount point %s: not a directory", dir)
			}
			if err := mountfs.Check(); err != nil {
				return err
			}
			// SIGINT and SIGTERM are caught from before the mount exists, so
			// that none kills the process with the file system mounted
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sigs)
			r, err := a.openRepo(ctx)
			if err != nil {
				return err
			}
			b, err := r.LoadBackup(ctx, id)
			if backend.IsNotFound(err) {
				return fmt.Errorf("%w in the repository: %s (see 'raksha backup list'): %w", repo.ErrNoBackup, id, err)
			}
			if err != nil {
				return err
			}
			ref, err := pickDisk(b, vm, diskSel)
			if err != nil {
				return err
			}
			// reads go on after an interrupt while the mount point is busy:
			// the mount ends when it is unmounted, not when ctx ends
			d, err := r.OpenDisk(context.WithoutCancel(ctx), ref.ID, repo.ReaderOptions{CacheChunks: cacheChunks})
			if err != nil {
				return err
			}
			where := fmt.Sprintf("backup %s vm %s disk %s", id, ref.VM, ref.Disk)
			opts := mountfs.Options{Source: "raksha:" + ref.ID, Log: a.log}
			res := mountResult{Backup: id, Disk: ref.ID, Raw: raw, Dir: dir}
			var m served
			var what string
			if raw {
				tbl, err := filerestore.ReadTable(d, d.Size())
				if err != nil {
					return fmt.Errorf("mount %s: %w", where, err)
				}
				files := []mountfs.RawFile{{Name: "disk.img", R: d, Size: d.Size()}}
				what = fmt.Sprintf("disk.img (%s)", humanBytes(d.Size()))
				if tbl != nil {
					for _, p := range tbl.Partitions {
						if p.Start+p.Size > d.Size() {
							continue // OpenVolume names the damage; the image is still there
						}
						files = append(files, mountfs.RawFile{Name: fmt.Sprintf("part%d.img", p.Number), R: io.NewSectionReader(d, p.Start, p.Size), Size: p.Size})
					}
					what += fmt.Sprintf(" and %d partitions as partN.img; %s", len(files)-1, tbl)
				}
				fm, err := mountfs.MountRaw(dir, files, opts)
				if err != nil {
					return fmt.Errorf("mount %s: %w", where, err)
				}
				m = fm
			} else {
				vol, err := openVolume(d, d.Size(), partition, where)
				if err != nil {
					return err
				}
				if vol.Partition != nil {
					where += fmt.Sprintf(" partition %d", vol.Partition.Number)
					res.Partition = vol.Partition
				}
				if filerestore.IsXFS(vol) {
					if err := loopfs.Check("xfs"); err != nil {
						return xfsUnavailable("mount "+where, "", err)
					}
					lm, err := loopfs.Open(vol, vol.Size, "xfs", dir, loopfs.Options{Source: opts.Source, Log: a.log})
					if err != nil {
						return fmt.Errorf("mount %s: %w", where, err)
					}
					res.FSType = "xfs"
					what = fmt.Sprintf("XFS file system (%s) on %s, read-only, %s", humanBytes(vol.Size), lm.Device, xfsLogNote(lm))
					return a.waitMount(ctx, sigs, lm, lm.Dir, "'umount "+lm.Dir+"'", start, d, res, where, what)
				}
				res.FSType = "ext"
				x, err := filerestore.Open(vol, vol.Size)
				if err != nil {
					return fmt.Errorf("mount %s: %w", where, err)
				}
				if j := x.Journal(); j.NeedsRecovery {
					res.NeedsRecovery = true
					why := replayBlocker(j, noReplay, loopfs.Check)
					if why == "" {
						lm, err := loopfs.Open(vol, vol.Size, "ext4", dir, loopfs.Options{Source: opts.Source, Log: a.log})
						if err != nil {
							return fmt.Errorf("mount %s: %w", where, err)
						}
						res.Replay, res.OverlayBytes = "kernel", lm.Replayed
						note := fmt.Sprintf("journal replayed into a private overlay (%s written there, none to the backup)", humanBytes(lm.Replayed))
						if lm.RecoveryErr != nil {
							res.Replay, res.ReplayNote = "failed", lm.RecoveryErr.Error()
							note = "journal NOT replayed"
							fmt.Fprintf(a.stderr, "warning: mount %s: %s\n", where, journalNotReplayed(j, "mounting with it failed: "+lm.RecoveryErr.Error()))
						}
						what = fmt.Sprintf("ext file system (%s) on %s, read-only, loop-mounted by the kernel since its journal needed recovery: %s", humanBytes(vol.Size), lm.Device, note)
						return a.waitMount(ctx, sigs, lm, lm.Dir, "'umount "+lm.Dir+"'", start, d, res, where, what)
					}
					res.Replay, res.ReplayNote = "skipped", why
					fmt.Fprintf(a.stderr, "warning: mount %s: %s\n", where, journalNotReplayed(j, why))
				}
				st := x.Statfs()
				what = fmt.Sprintf("ext file system (%s", humanBytes(int64(st.Blocks)*st.BlockSize))
				if st.Label != "" {
					what += fmt.Sprintf(", label %q", st.Label)
				}
				what += ")"
				fm, err := mountfs.MountExt4(dir, x, opts)
				if err != nil {
					return fmt.Errorf("mount %s: %w", where, err)
				}
				m = fm
			}
			return a.waitMount(ctx, sigs, m, dir, "", start, d, res, where, what)
		},
	}
	f := c.Flags()
	f.StringVar(&vm, "vm", "", `VM name in the backup ("local" for 'raksha disk backup'); optional when one disk matches`)
	f.StringVar(&diskSel, "disk", "", "disk name (or VM/DISK); optional when the backup has one disk")
	f.IntVar(&partition, "partition", 0, "partition number (1-based); default: the only Linux file-system partition, or the whole disk")
	f.BoolVar(&raw, "raw", false, "serve the raw disk image (disk.img) and its partitions (partN.img) instead of the files")
	f.BoolVar(&noReplay, "no-replay", false, "serve an ext4 file system with raksha's reader even if its journal needs recovery (no loop mount; recent writes may be missing)")
	f.IntVar(&cacheChunks, "cache-chunks", 0, fmt.Sprintf("decoded chunks kept in memory (default %d)", repo.DefaultReaderCacheChunks))
	return c
}

// deadMount reports whether dir is a FUSE mount whose server is gone
// (its attributes may still be cached, so stat alone does not tell).
func deadMount(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return errors.Is(err, syscall.ENOTCONN)
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	return errors.Is(err, syscall.ENOTCONN)
}

// openVolume picks the file system of a disk: the whole disk, the only
// Linux partition, or partition n; errors name the disk and list its
// partitions, and a partition number that does not fit is a usage error.
func openVolume(d *repo.DiskReader, size int64, n int, where string) (*filerestore.Volume, error) {
	vol, err := filerestore.OpenVolume(d, size, n)
	var pe *filerestore.PartitionError
	switch {
	case err == nil:
		return vol, nil
	case errors.As(err, &pe) && errors.Is(err, filerestore.ErrChoosePartition):
		return nil, usageError{fmt.Errorf("%s: %w; give --partition N", where, err)}
	case errors.As(err, &pe):
		return nil, usageError{fmt.Errorf("%s: --partition %d: %w", where, n, err)}
	default:
		return nil, fmt.Errorf("%s: %w", where, err)
	}
}

// served is a mount that 'raksha mount' serves: a FUSE mount of mountfs or
// a loop mount of loopfs.
type served interface {
	Done() <-chan struct{}
	Unmount() error
}

// waitMount serves m (mounted at dir) until it is unmounted: from outside
// ('raksha umount', fusermount3 -u, or the other command given), or here
// on SIGINT, SIGTERM or the end of ctx. A busy mount point stays mounted
// and says so; the next signal tries again.
func (a *app) waitMount(ctx context.Context, sigs <-chan os.Signal, m served, dir, otherUnmount string, start time.Time, d *repo.DiskReader, res mountResult, where, what string) error {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	if otherUnmount == "" {
		otherUnmount = fmt.Sprintf("'fusermount3 -u %s'", dir)
	}
	mounted := time.Now()
	res.MountSeconds = mounted.Sub(start).Seconds()
	if a.format != "json" {
		fmt.Fprintf(a.stdout, "mounted %s read-only at %s: %s\n", where, dir, what)
		fmt.Fprintf(a.stdout, "unmount with Ctrl-C, 'raksha umount %s' or %s\n", dir, otherUnmount)
	}
	a.log.Info("mounted", "where", where, "dir", dir, "took", time.Since(start))
	try := func(why string) {
		a.log.Info("unmounting", "dir", dir, "on", why)
		if err := m.Unmount(); err != nil {
			hint := ""
			if errors.Is(err, syscall.EBUSY) {
				hint = fmt.Sprintf("; close what uses it and press Ctrl-C again, or run 'raksha umount --lazy %s'", dir)
			}
			fmt.Fprintf(a.stderr, "raksha: still mounted: %v%s\n", err, hint)
		}
	}
	ctxDone := ctx.Done()
	sawSignal := false
	for done := false; !done; {
		select {
		case <-m.Done():
			done = true
		case s := <-sigs:
			sawSignal = true
			try(s.String())
		case <-ctxDone:
			ctxDone = nil
			if sawSignal {
				continue // main's context ends on the signal handled above
			}
			// one Ctrl-C reaches both main's context and sigs: one try
			select {
			case <-sigs:
				sawSignal = true
			case <-time.After(100 * time.Millisecond):
			}
			try("cancel")
		}
	}
	res.ServedSeconds = time.Since(mounted).Seconds()
	if e, ok := m.(interface{ Err() error }); ok {
		if err := e.Err(); err != nil {
			return fmt.Errorf("after unmounting %s: %w", dir, err)
		}
	}
	res.Fetch = d.Stats()
	man := d.Manifest()
	res.DiskChunks, res.DiskSize, res.ChunkSize = man.Chunks, man.Size, man.ChunkSize
	if a.format == "json" {
		return a.printJSON(res)
	}
	fmt.Fprintf(a.stdout, "unmounted %s after %s: fetched %d of %d chunks (%s of a %s disk)\n",
		dir, time.Duration(res.ServedSeconds*float64(time.Second)).Round(time.Millisecond),
		res.Fetch.ChunksFetched, man.Chunks, humanBytes(res.Fetch.BytesFetched), humanBytes(man.Size))
	return nil
}

func (a *app) umountCmd() *cobra.Command {
	var lazy bool
	c := &cobra.Command{
		Use:   "umount [--lazy] DIR",
		Short: "Unmount a 'raksha mount' (the mount command then exits)",
		Long: `Unmount the raksha mount at DIR with fusermount3 -u (a loop mount of
'raksha mount', XFS or ext4 with its journal replayed, with umount(2)). A busy mount point (a process has a file
open or its working directory there) stays mounted unless --lazy detaches it
now and lets it go when the last user is done. DIR must be a raksha mount:
other mounts are refused.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := mountfs.Unmount(cmd.Context(), args[0], lazy)
			if errors.Is(err, mountfs.ErrNotMounted) {
				return usageError{err}
			}
			if err != nil {
				return err
			}
			if a.format != "json" {
				fmt.Fprintf(a.stdout, "unmounted %s\n", args[0])
			}
			return nil
		},
	}
	c.Flags().BoolVar(&lazy, "lazy", false, "detach now even if busy; the file system goes when the last user is done")
	return c
}
