package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/raksha-backup/raksha/policies"
	"github.com/raksha-backup/raksha/workflows"
)

func (a *app) policyCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "policy",
		Short: "Backup policies: validate and apply policy files (Temporal Schedules), list, show, pause, resume, trigger, delete",
		Long: `A policy (YAML, see policies/examples/) backs up one workload on a schedule.
Applied, it is the Temporal Schedule policy/<name>, whose runs are WorkloadBackup
workflows on the raksha-control task queue. A policy of kind maintenance instead
prunes expired backups, collects garbage and checks or verifies one repository
(RepositoryMaintenance workflows); one of kind drill clones the newest backup of
a workload into a drill project, runs its health check in every guest, records
the result beside the backup and tears the clone down (RestoreDrill workflows).`,
	}
	c.AddCommand(a.policyValidateCmd(), a.policyApplyCmd(), a.policyListCmd(), a.policyShowCmd(),
		a.policyPauseCmd(true), a.policyPauseCmd(false), a.policyTriggerCmd(), a.policyDeleteCmd())
	return c
}

// fileFlags gives a command -f FILE|DIR (kubectl style). -f is --format
// everywhere else; here the output format is --format only.
func (a *app) fileFlags(c *cobra.Command, files *[]string) {
	c.Flags().StringArrayVarP(files, "file", "f", nil, "policy file, or directory of *.yaml and *.yml files (repeatable)")
	c.Flags().StringVar(&a.format, "format", "table", "output format: table or json")
}

// loadPolicies reads every policy of the given files and directories; any
// validation error of any file means none is used.
func loadPolicies(files []string) ([]*policies.Policy, error) {
	if len(files) == 0 {
		return nil, usagef("give the policies with -f FILE or -f DIR")
	}
	var all []*policies.Policy
	verr := &policies.ValidationError{}
	for _, f := range files {
		ps, err := policies.Load(f)
		var ve *policies.ValidationError
		switch {
		case errors.As(err, &ve):
			verr.Errs = append(verr.Errs, ve.Errs...)
		case err != nil:
			return nil, usagef("%v", err)
		}
		all = append(all, ps...)
	}
	seen := map[string]*policies.Policy{}
	for _, p := range all {
		if q, ok := seen[p.Name]; ok {
			verr.Errs = append(verr.Errs, &policies.FieldError{File: p.File, Line: p.Line, Column: p.Column, Field: "name",
				Msg: fmt.Sprintf("policy %q is also defined at %s:%d", p.Name, q.File, q.Line)})
		}
		seen[p.Name] = p
	}
	if len(verr.Errs) > 0 {
		return nil, usageError{fmt.Errorf("invalid policies (nothing applied):\n%w", verr)}
	}
	return all, nil
}

func (a *app) policyValidateCmd() *cobra.Command {
	var files []string
	c := &cobra.Command{
		Use:   "validate -f FILE|DIR",
		Short: "Check policy files without applying them (no Temporal needed)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := loadPolicies(files)
			if err != nil {
				return err
			}
			if a.format == "json" {
				return a.printJSON(ps)
			}
			for _, p := range ps {
				fmt.Fprintf(a.stdout, "%s:%d: policy %s is valid: %s, %s\n", p.File, p.Line, p.Name, what(p), when(p))
			}
			return nil
		},
	}
	a.fileFlags(c, &files)
	return c
}

// what says what a policy's runs do: back up a workload, or maintain a
// repository.
func what(p *policies.Policy) string {
	if p.Kind == policies.KindMaintenance {
		return "maintenance of repository " + p.Repository + " (" + maintenanceSteps(p.MaintenanceRequest()) + ")"
	}
	if p.Kind == policies.KindDrill {
		return drillSteps(p.DrillRequest())
	}
	return "workload " + p.Workload
}

// drillSteps says what a drill run does.
func drillSteps(r workflows.DrillRequest) string {
	out := "restore drill of workload " + r.Workload
	if r.Project != "" {
		out += " (backups of project " + r.Project + ")"
	}
	out += " into project " + r.DrillProject
	if len(r.VMs) > 0 {
		out += " (VMs " + strings.Join(r.VMs, ", ") + ")"
	}
	if r.HealthCheck != nil {
		out += ", health check " + strings.Join(append([]string{r.HealthCheck.Path}, r.HealthCheck.Args...), " ")
	}
	return out + ", timeout " + policies.FormatDuration(r.Timeout)
}

// maintenanceSteps lists what a maintenance run does, in order.
func maintenanceSteps(m workflows.MaintenanceRequest) string {
	var steps []string
	if m.PruneExpired {
		steps = append(steps, "prune expired backups")
	}
	if m.GC {
		g := "gc"
		if m.GCGrace > 0 {
			g += " (grace " + policies.FormatDuration(m.GCGrace) + ")"
		}
		steps = append(steps, g)
	}
	if m.Verify != "" {
		steps = append(steps, m.Verify)
	}
	if len(steps) == 0 {
		return "nothing"
	}
	return strings.Join(steps, ", ")
}

// when describes a policy's schedule in words.
func when(p *policies.Policy) string {
	s := p.Schedule
	var out string
	if s.Cron != "" {
		tz := s.TimeZone
		if tz == "" {
			tz = "UTC"
		}
		out = fmt.Sprintf("cron %q (%s)", s.Cron, tz)
	} else {
		out = "every " + policies.FormatDuration(s.Every)
		if s.Offset > 0 {
			out += " offset " + policies.FormatDuration(s.Offset)
		}
	}
	if s.Jitter > 0 {
		out += " jitter " + policies.FormatDuration(s.Jitter)
	}
	return out
}

func (a *app) policyApplyCmd() *cobra.Command {
	var files []string
	var tf temporalFlags
	c := &cobra.Command{
		Use:   "apply -f FILE|DIR",
		Short: "Create or update the Temporal Schedule of each policy (idempotent)",
		Long: `Create or update the Temporal Schedule of each policy. All files are validated
first; if any is invalid, nothing is applied. A schedule that already matches its
policy is left alone. A policy that says paused: true or false sets the schedule's
state; one that says nothing keeps the state it has (raksha policy pause survives
a re-apply).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := loadPolicies(files)
			if err != nil {
				return err
			}
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			sc := c.ScheduleClient()
			var results []policies.ApplyResult
			for _, p := range ps {
				r, err := policies.Apply(cmd.Context(), sc, p)
				if err != nil {
					return err
				}
				results = append(results, r)
				if a.format != "json" {
					fmt.Fprintf(a.stdout, "%s: %s (schedule %s, %s, %s)\n", p.Name, r.Action, r.ScheduleID, what(p), when(p))
				}
			}
			if a.format == "json" {
				return a.printJSON(results)
			}
			return nil
		},
	}
	a.fileFlags(c, &files)
	tf.add(c)
	return c
}

func (a *app) policyListCmd() *cobra.Command {
	var tf temporalFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "List the policies applied to Temporal",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			list, err := policies.List(cmd.Context(), c.ScheduleClient())
			if err != nil {
				return err
			}
			if a.format == "json" {
				if list == nil {
					list = []*policies.Status{}
				}
				return a.printJSON(list)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "POLICY\tWORKLOAD\tWHEN\tSTATE\tNEXT RUN\tLAST RUN")
			for _, st := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", st.Policy, dash(st.Workload), st.When, state(st), next(st), last(st))
			}
			return tw.Flush()
		},
	}
	tf.add(c)
	return c
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func state(st *policies.Status) string {
	if st.Paused {
		return "paused"
	}
	return "active"
}

func next(st *policies.Status) string {
	if st.Paused || len(st.Next) == 0 {
		return "-"
	}
	return st.Next[0].Local().Format("2006-01-02 15:04:05")
}

func last(st *policies.Status) string {
	if len(st.Recent) == 0 {
		return "-"
	}
	r := st.Recent[len(st.Recent)-1]
	return r.Started.Local().Format("2006-01-02 15:04:05") + " " + r.WorkflowID
}

func (a *app) policyShowCmd() *cobra.Command {
	var tf temporalFlags
	c := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a policy's schedule: its backup request, state, next and recent runs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			st, err := policies.Show(cmd.Context(), c.ScheduleClient(), args[0])
			if err != nil {
				return err
			}
			if a.format == "json" {
				return a.printJSON(st)
			}
			w := a.stdout
			fmt.Fprintf(w, "policy      %s\nschedule    %s\nworkload    %s\nwhen        %s\n", st.Policy, st.ScheduleID, dash(st.Workload), st.When)
			fmt.Fprintf(w, "state       %s", state(st))
			if st.Note != "" {
				fmt.Fprintf(w, " (%s)", st.Note)
			}
			fmt.Fprintf(w, "\nruns        %d started, %d skipped (previous still running), %d missed (past the catch-up window)\n",
				st.Actions, st.SkippedOverlap, st.MissedCatchup)
			if m := st.Maintenance; m != nil {
				fmt.Fprintf(w, "maintains   repository %s: %s\n", m.Repository, maintenanceSteps(*m))
			}
			if d := st.Drill; d != nil {
				fmt.Fprintf(w, "drills      %s\nrepository  %s\n", drillSteps(*d), d.Repository)
				for from, to := range d.Networks {
					fmt.Fprintf(w, "network     %s -> %s\n", from, to)
				}
				for from, to := range d.Flavors {
					fmt.Fprintf(w, "flavor      %s -> %s\n", from, to)
				}
				for _, h := range d.PostHooks {
					fmt.Fprintf(w, "post-hook   %s (timeout %s)\n", strings.Join(append([]string{h.Path}, h.Args...), " "), policies.FormatDuration(h.Timeout))
				}
			}
			if r := st.Request; r != nil && st.Maintenance == nil && st.Drill == nil {
				fmt.Fprintf(w, "backs up    %s", r.Selector)
				if r.Project != "" {
					fmt.Fprintf(w, " in project %s", r.Project)
				}
				if r.Selector.Include != "" {
					fmt.Fprintf(w, ", names matching %s", r.Selector.Include)
				}
				if r.Selector.Exclude != "" {
					fmt.Fprintf(w, ", except names matching %s", r.Selector.Exclude)
				}
				fmt.Fprintf(w, "\nrepository  %s\nconsistency %s", r.Repository, r.Consistency)
				if r.Consistency == "app" {
					fmt.Fprintf(w, " (freeze timeout %s, on failure %s)", policies.FormatDuration(r.FreezeTimeout), r.OnAppFailure)
				}
				fmt.Fprintln(w)
				for _, h := range r.PreHooks {
					fmt.Fprintf(w, "pre-hook    %s (timeout %s, on failure %s)\n", strings.Join(append([]string{h.Path}, h.Args...), " "), policies.FormatDuration(h.Timeout), r.HookFailure)
				}
				for _, h := range r.PostHooks {
					fmt.Fprintf(w, "post-hook   %s (timeout %s, on failure %s)\n", strings.Join(append([]string{h.Path}, h.Args...), " "), policies.FormatDuration(h.Timeout), r.HookFailure)
				}
				fmt.Fprintf(w, "retention   %s", retentionString(r))
				if st.ExpireAfter != "" {
					fmt.Fprintf(w, ", expire after %s", st.ExpireAfter)
				}
				fmt.Fprintln(w)
			}
			for i, t := range st.Next {
				if i == 3 || st.Paused {
					break
				}
				fmt.Fprintf(w, "next        %s\n", t.Local().Format(time.RFC3339))
			}
			for _, id := range st.Running {
				fmt.Fprintf(w, "running     %s\n", id)
			}
			for _, r := range st.Recent {
				fmt.Fprintf(w, "recent      %s %s\n", r.Started.Local().Format(time.RFC3339), r.WorkflowID)
			}
			return nil
		},
	}
	tf.add(c)
	return c
}

func retentionString(r *workflows.BackupRequest) string {
	var parts []string
	for _, x := range []struct {
		n    int
		name string
	}{{r.Retention.Last, "last"}, {r.Retention.Hourly, "hourly"}, {r.Retention.Daily, "daily"}, {r.Retention.Weekly, "weekly"},
		{r.Retention.Monthly, "monthly"}, {r.Retention.Yearly, "yearly"}} {
		if x.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", x.n, x.name))
		}
	}
	if len(parts) == 0 {
		return "keep all"
	}
	return "keep " + strings.Join(parts, ", ")
}

func (a *app) policyPauseCmd(pause bool) *cobra.Command {
	var tf temporalFlags
	var note string
	use, short := "pause NAME", "Stop a policy's schedule from starting backups (running ones go on)"
	if !pause {
		use, short = "resume NAME", "Let a paused policy's schedule start backups again"
	}
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			verb := "paused"
			if pause {
				err = policies.Pause(cmd.Context(), c.ScheduleClient(), args[0], note)
			} else {
				verb = "resumed"
				err = policies.Resume(cmd.Context(), c.ScheduleClient(), args[0], note)
			}
			if err != nil {
				return err
			}
			return a.done(map[string]string{"policy": args[0], "state": verb}, "policy %s %s\n", args[0], verb)
		},
	}
	c.Flags().StringVar(&note, "note", "", "why (shown by raksha policy show and in the Temporal UI)")
	tf.add(c)
	return c
}

// done prints a command's outcome: v as JSON, or the message.
func (a *app) done(v any, format string, args ...any) error {
	if a.format == "json" {
		return a.printJSON(v)
	}
	fmt.Fprintf(a.stdout, format, args...)
	return nil
}

func (a *app) policyTriggerCmd() *cobra.Command {
	var tf temporalFlags
	c := &cobra.Command{
		Use:   "trigger NAME",
		Short: "Run a policy's backup now (also when paused; skipped if its previous backup still runs)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			sc := c.ScheduleClient()
			st, err := policies.Show(cmd.Context(), sc, args[0])
			if err != nil {
				return err
			}
			if len(st.Running) > 0 {
				fmt.Fprintf(a.stderr, "warning: %s still runs: the trigger is skipped, as the policy's runs never overlap\n", strings.Join(st.Running, ", "))
			}
			if err := policies.Trigger(cmd.Context(), sc, args[0]); err != nil {
				return err
			}
			return a.done(map[string]string{"policy": args[0], "triggered": "true"},
				"policy %s triggered: see raksha policy show %s\n", args[0], args[0])
		},
	}
	tf.add(c)
	return c
}

func (a *app) policyDeleteCmd() *cobra.Command {
	var tf temporalFlags
	c := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a policy's schedule (running backups go on; backups made stay)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			if err := policies.Delete(cmd.Context(), c.ScheduleClient(), args[0]); err != nil {
				return err
			}
			return a.done(map[string]string{"policy": args[0], "deleted": "true"}, "policy %s deleted\n", args[0])
		},
	}
	tf.add(c)
	return c
}
