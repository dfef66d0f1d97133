package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/raksha-backup/raksha/internal/repo"
)

func (a *app) repoCmd() *cobra.Command {
	c := &cobra.Command{Use: "repo", Short: "Create and maintain repositories"}
	c.AddCommand(a.repoInitCmd(), a.repoPruneCmd(), a.repoGCCmd(), a.repoVerifyCmd(), a.repoCheckCmd())
	return c
}

func (a *app) repoInitCmd() *cobra.Command {
	var chunkSize, compression string
	var noEncryption bool
	c := &cobra.Command{
		Use:   "init --repo URL [--chunk-size 4MiB] [--compression zstd|none] [--insecure-no-encryption]",
		Short: "Create a repository",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cs, err := parseSize(chunkSize)
			if err != nil {
				return usagef("--chunk-size: %v", err)
			}
			pw, err := a.password()
			if err != nil {
				return err
			}
			if !noEncryption && pw == "" {
				return usagef("set RAKSHA_PASSWORD or --password-file (or --insecure-no-encryption)")
			}
			be, err := a.openBackend(cmd.Context())
			if err != nil {
				return err
			}
			defer be.Close()
			r, err := repo.Init(cmd.Context(), be, repo.InitOptions{ChunkSize: int(cs), Compression: compression,
				NoEncryption: noEncryption, Password: pw}, repo.Options{Log: a.log})
			if err != nil {
				return err
			}
			cfg := r.Config()
			if a.format == "json" {
				return a.printJSON(cfg)
			}
			fmt.Fprintf(a.stdout, "created repository %s at %s (chunk size %s, compression %s, encryption %s)\n",
				cfg.ID, r.Location(), humanBytes(int64(cfg.ChunkSize)), cfg.Compression, cfg.Encryption)
			return nil
		},
	}
	c.Flags().StringVar(&chunkSize, "chunk-size", "4MiB", "chunk size, a power of two from 64KiB to 64MiB")
	c.Flags().StringVar(&compression, "compression", "zstd", "compression: zstd or none")
	c.Flags().BoolVar(&noEncryption, "insecure-no-encryption", false, "store data unencrypted (anyone with access to the store can read it)")
	return c
}

func (a *app) repoPruneCmd() *cobra.Command {
	var p repo.Retention
	var labels, tags []string
	var dryRun bool
	c := &cobra.Command{
		Use:   "prune [--keep-last N] [--keep-daily N] ... [--dry-run]",
		Short: "Delete backups that the retention rules do not keep (per label group); expired backups go, protected ones stay",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			lbl, err := parseLabels(labels)
			if err != nil {
				return err
			}
			r, err := a.openRepo(cmd.Context())
			if err != nil {
				return err
			}
			dec, err := r.Prune(cmd.Context(), repo.Filter{Labels: lbl, Tags: tags}, p, time.Now(), dryRun)
			if a.format == "json" {
				if jerr := a.printJSON(dec); jerr != nil {
					return jerr
				}
				return err
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			verb := "remove"
			if dryRun {
				verb = "would remove"
			}
			fmt.Fprintln(tw, "ID\tCREATED\tDECISION\tREASONS")
			removed := 0
			for _, d := range dec {
				what := "keep"
				if !d.Keep {
					what = verb
					removed++
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\n", d.Backup.ID, d.Backup.Created.Local().Format("2006-01-02 15:04:05"), what, d.Reasons)
			}
			tw.Flush()
			fmt.Fprintf(a.stdout, "%d backups, %d %s\n", len(dec), removed, map[bool]string{true: "would be removed (dry run)", false: "removed; run 'raksha repo gc' to free their chunks"}[dryRun])
			return err
		},
	}
	f := c.Flags()
	f.IntVar(&p.Last, "keep-last", 0, "keep the N newest backups")
	f.IntVar(&p.Hourly, "keep-hourly", 0, "keep the newest backup of each of the last N hours with backups")
	f.IntVar(&p.Daily, "keep-daily", 0, "keep the newest backup of each of the last N days with backups")
	f.IntVar(&p.Weekly, "keep-weekly", 0, "keep the newest backup of each of the last N weeks with backups")
	f.IntVar(&p.Monthly, "keep-monthly", 0, "keep the newest backup of each of the last N months with backups")
	f.IntVar(&p.Yearly, "keep-yearly", 0, "keep the newest backup of each of the last N years with backups")
	f.StringArrayVar(&labels, "label", nil, "only backups with this label (key=value), repeatable")
	f.StringArrayVar(&tags, "tag", nil, "only backups with this tag, repeatable")
	f.BoolVar(&dryRun, "dry-run", false, "show what would be removed, remove nothing")
	return c
}

func (a *app) repoGCCmd() *cobra.Command {
	var grace time.Duration
	var dryRun bool
	c := &cobra.Command{
		Use:   "gc [--grace 1h] [--dry-run]",
		Short: "Free chunks no backup references (safe while backups run)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if grace < 0 {
				return usagef("--grace must not be negative")
			}
			r, err := a.openRepo(cmd.Context())
			if err != nil {
				return err
			}
			st, err := r.GC(cmd.Context(), repo.GCOptions{Grace: grace, DryRun: dryRun})
			if err != nil {
				return err
			}
			if a.format == "json" {
				return a.printJSON(st)
			}
			fmt.Fprintf(a.stdout, "referenced chunks: %d\nmoved to trash:    %d (%s)\npurged from trash: %d (%s)\nrescued:           %d\nkept (too young):  %d\nlive sessions:     %d\norphan manifests:  %d\n",
				st.Referenced, st.Trashed, humanBytes(st.TrashedBytes), st.Purged, humanBytes(st.PurgedBytes),
				st.Rescued, st.KeptYoung, st.LiveSessions, st.OrphanManifests)
			if dryRun {
				fmt.Fprintln(a.stdout, "(dry run: nothing changed)")
			}
			return nil
		},
	}
	c.Flags().DurationVar(&grace, "grace", repo.DefaultGCGrace, "minimum age of a chunk before it is trashed, and of a trashed chunk before it is purged")
	c.Flags().BoolVar(&dryRun, "dry-run", false, "count only")
	return c
}

func (a *app) repoVerifyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "verify [BACKUP_ID...]",
		Short: "Re-read and check every chunk the backups reference; report bad chunks with the backups they affect",
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := a.openRepo(cmd.Context())
			if err != nil {
				return err
			}
			rep, verr := r.Verify(cmd.Context(), args, nil)
			if rep == nil {
				return verr
			}
			if a.format == "json" {
				if err := a.printJSON(rep); err != nil {
					return err
				}
				return verr
			}
			fmt.Fprintf(a.stdout, "verified %d backups, %d disks, %d chunks, %s\n", rep.Backups, rep.Disks, rep.Chunks, humanBytes(rep.Bytes))
			for _, b := range rep.BadChunks {
				fmt.Fprintf(a.stdout, "BAD CHUNK %s: %s\n  affects backups %v (disks %v)\n", b.ID, b.Error, b.Backups(), b.Disks)
			}
			for _, o := range rep.BadObjects {
				fmt.Fprintf(a.stdout, "BAD OBJECT: %s\n", o)
			}
			return verr
		},
	}
}

func (a *app) repoCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Check the repository's structure without reading chunk data",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := a.openRepo(cmd.Context())
			if err != nil {
				return err
			}
			rep, cerr := r.Check(cmd.Context())
			if rep == nil {
				return cerr
			}
			if a.format == "json" {
				if err := a.printJSON(rep); err != nil {
					return err
				}
				return cerr
			}
			fmt.Fprintf(a.stdout, "backups %d, disk manifests %d, chunks %d (+%d in trash), unreferenced %d, sessions in progress %d\n",
				rep.Backups, rep.Manifests, rep.StoredChunks, rep.TrashedChunks, rep.UnreferencedIDs, rep.Sessions)
			for _, m := range rep.MissingChunks {
				fmt.Fprintf(a.stdout, "MISSING CHUNK %s\n", m)
			}
			for _, e := range rep.Errors {
				fmt.Fprintf(a.stdout, "ERROR %s\n", e)
			}
			if cerr == nil {
				fmt.Fprintln(a.stdout, "no errors")
			}
			return cerr
		},
	}
}
