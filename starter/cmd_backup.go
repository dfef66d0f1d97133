package main

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/raksha-backup/raksha/internal/repo"
)

func (a *app) backupCmd() *cobra.Command {
	c := &cobra.Command{Use: "backup", Short: "List, show, protect and delete backups"}
	c.AddCommand(viaAPI(a.backupStartCmd()), viaAPI(a.backupCancelCmd()), viaAPI(a.backupListCmd()), viaAPI(a.backupShowCmd()), viaAPI(a.backupDeleteCmd()),
		viaAPI(a.backupProtectCmd("protect", true)), viaAPI(a.backupProtectCmd("unprotect", false)),
		viaAPI(a.backupLsCmd()), viaAPI(a.backupGetCmd()))
	return c
}

func labelString(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ",")
}

// freezeString shows the freeze window of each VM, by name, or "-".
func freezeString(w map[string]time.Duration, workload time.Duration) string {
	if len(w) == 0 {
		return "-"
	}
	vms := make([]string, 0, len(w))
	for vm := range w {
		vms = append(vms, vm)
	}
	sort.Strings(vms)
	parts := make([]string, len(vms))
	for i, vm := range vms {
		parts[i] = fmt.Sprintf("%s %.2fs", vm, w[vm].Seconds())
	}
	if workload > 0 {
		return fmt.Sprintf("workload %.2fs: %s", workload.Seconds(), strings.Join(parts, ", "))
	}
	return strings.Join(parts, ", ")
}

func backupSize(b *repo.Backup) int64 {
	var n int64
	for _, d := range b.Disks {
		n += d.Size
	}
	return n
}

// listedBackup is one backup of `backup list --format json`: the backup
// record's fields, and its last drill (if any) as last_drill.
type listedBackup struct {
	*repo.Backup
	LastDrill *repo.Drill `json:"last_drill,omitempty"`
}

// drillString says how a drill ended and when: "pass 2026-12-07 10:31" (time
// to ready after a pass), or "-" for none.
func drillString(d *repo.Drill) string {
	if d == nil {
		return "-"
	}
	out := d.Result + " " + d.Finished.Local().Format("2006-01-02 15:04")
	if d.Result == repo.DrillPass && d.TimeToReady > 0 {
		out += fmt.Sprintf(" (ready in %.0fs)", d.TimeToReady.Seconds())
	}
	return out
}

func (a *app) backupListCmd() *cobra.Command {
	var labels, tags []string
	var pf pageFlags
	c := &cobra.Command{
		Use:   "list [--label k=v]... [--tag T]...",
		Short: "List backups, oldest first (through raksha-api: the project's, newest first)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			api := a.apiMode(cmd)
			if err := pf.check(cmd, api); err != nil {
				return err
			}
			if api {
				if err := notThroughAPI(cmd, "label", "tag"); err != nil {
					return err
				}
				return a.apiBackupList(cmd.Context(), pf)
			}
			lbl, err := parseLabels(labels)
			if err != nil {
				return err
			}
			r, err := a.openRepo(cmd.Context())
			if err != nil {
				return err
			}
			list, err := r.ListBackups(cmd.Context(), repo.Filter{Labels: lbl, Tags: tags})
			if err != nil {
				return err
			}
			drills, err := r.LastDrills(cmd.Context())
			if err != nil {
				return err
			}
			if a.format == "json" {
				out := make([]listedBackup, 0, len(list))
				for _, b := range list {
					out = append(out, listedBackup{Backup: b, LastDrill: drills[b.ID]})
				}
				return a.printJSON(out)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tCREATED\tSIZE\tDISKS\tREAD\tNEW DATA\tREUSED\tSTORED\tCONSISTENCY\tFREEZE WINDOWS\tSTATUS\tEXPIRES\tLAST DRILL\tLABELS\tTAGS")
			for _, b := range list {
				status := "available"
				if b.Protected {
					status = "protected"
				}
				exp := "-"
				if b.Expires != nil {
					exp = b.Expires.Local().Format("2006-01-02 15:04")
				}
				consistency := b.Consistency
				if consistency == "" {
					consistency = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.ID, b.Created.Local().Format("2006-01-02 15:04:05"),
					humanBytes(backupSize(b)), len(b.Disks), humanBytes(b.Stats.BytesRead), humanBytes(b.Stats.BytesNew),
					humanBytes(b.Stats.BytesReused), humanBytes(b.Stats.BytesStored), consistency, freezeString(b.FreezeWindows, b.WorkloadWindow),
					status, exp, drillString(drills[b.ID]), labelString(b.Labels), strings.Join(b.Tags, ","))
			}
			return tw.Flush()
		},
	}
	c.Flags().StringArrayVar(&labels, "label", nil, "only backups with this label (key=value), repeatable")
	c.Flags().StringArrayVar(&tags, "tag", nil, "only backups with this tag, repeatable")
	pf.add(c)
	return c
}

func (a *app) backupShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show BACKUP_ID",
		Short: "Show a backup with its disks",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if a.apiMode(cmd) {
				return a.apiBackupShow(ctx, args[0])
			}
			r, err := a.openRepo(ctx)
			if err != nil {
				return err
			}
			b, err := r.LoadBackup(ctx, args[0])
			if err != nil {
				return err
			}
			var ms []*repo.DiskManifest
			for _, d := range b.Disks {
				m, err := r.LoadManifest(ctx, d.ID)
				if err != nil {
					return err
				}
				ms = append(ms, m)
			}
			drills, err := r.ListDrills(ctx, b.ID)
			if err != nil {
				return err
			}
			if a.format == "json" {
				if drills == nil {
					drills = []*repo.Drill{}
				}
				return a.printJSON(map[string]any{"backup": b, "disks": ms, "drills": drills})
			}
			fmt.Fprintf(a.stdout, "backup      %s\ncreated     %s\ncompleted   %s\nprotected   %v\n", b.ID,
				b.Created.Local().Format(time.RFC3339), b.Completed.Local().Format(time.RFC3339), b.Protected)
			if b.Expires != nil {
				fmt.Fprintf(a.stdout, "expires     %s\n", b.Expires.Local().Format(time.RFC3339))
			}
			if b.Consistency != "" {
				fmt.Fprintf(a.stdout, "consistency %s\n", b.Consistency)
			}
			if len(b.FreezeWindows) > 0 {
				fmt.Fprintf(a.stdout, "frozen      %s\n", freezeString(b.FreezeWindows, b.WorkloadWindow))
			}
			fmt.Fprintf(a.stdout, "data        read %s, new %s (stored %s), reused %s\n", humanBytes(b.Stats.BytesRead),
				humanBytes(b.Stats.BytesNew), humanBytes(b.Stats.BytesStored), humanBytes(b.Stats.BytesReused))
			fmt.Fprintf(a.stdout, "labels      %s\ntags        %s\n", labelString(b.Labels), strings.Join(b.Tags, ","))
			for _, m := range ms {
				st := m.Stats
				base := "full"
				if m.Base != "" {
					base = "diffed against " + m.Base
				}
				fmt.Fprintf(a.stdout, "disk %s (%s)\n  size %s in %d chunks of %s, %s\n  read %s, new %s (stored %s), reused %s, %d holes, %.1fs\n",
					m.ID, m.Name, humanBytes(m.Size), m.Chunks, humanBytes(int64(m.ChunkSize)), base,
					humanBytes(st.BytesRead), humanBytes(st.BytesNew), humanBytes(st.BytesStored), humanBytes(st.BytesReused), st.Holes, st.Seconds)
				if m.Checkpoint != nil {
					fmt.Fprintf(a.stdout, "  checkpoint %s %s (generation %d)\n", m.Checkpoint.Kind, m.Checkpoint.Name, m.Checkpoint.Generation)
				}
			}
			for _, d := range drills {
				fmt.Fprintf(a.stdout, "drill %s %s: %s into project %s (workflow %s), teardown %s\n", d.ID, d.Started.Local().Format(time.RFC3339),
					drillString(d), d.Project, d.Workflow, d.Teardown)
				if d.Error != "" {
					fmt.Fprintf(a.stdout, "  %s\n", d.Error)
				}
				for _, g := range d.Guests {
					fmt.Fprintf(a.stdout, "  %s: exit %d in %.1fs\n", g.VM, g.ExitCode, g.Seconds)
					for _, l := range strings.Split(g.OutputTail, "\n") {
						fmt.Fprintf(a.stdout, "    | %s\n", l)
					}
				}
			}
			return nil
		},
	}
}

func (a *app) backupDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "delete BACKUP_ID...",
		Short: "Delete backups (protected ones are refused); 'repo gc' frees their chunks",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.apiMode(cmd) {
				return a.apiBackupDelete(cmd.Context(), args)
			}
			r, err := a.openRepo(cmd.Context())
			if err != nil {
				return err
			}
			for _, id := range args {
				if err := r.DeleteBackup(cmd.Context(), id); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "deleted %s\n", id)
			}
			return nil
		},
	}
}

func (a *app) backupProtectCmd(name string, protect bool) *cobra.Command {
	return &cobra.Command{
		Use:   name + " BACKUP_ID...",
		Short: map[bool]string{true: "Protect backups from delete and prune", false: "Remove the protection"}[protect],
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.apiMode(cmd) {
				return a.apiBackupProtect(cmd.Context(), args, protect)
			}
			r, err := a.openRepo(cmd.Context())
			if err != nil {
				return err
			}
			for _, id := range args {
				if _, err := r.UpdateBackup(cmd.Context(), id, func(b *repo.Backup) error { b.Protected = protect; return nil }); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%sed %s\n", name, id)
			}
			return nil
		},
	}
}
