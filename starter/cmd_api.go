package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/raksha-backup/raksha/api/apiclient"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/workflows"
)

// A tenant's raksha talks to raksha-api, as the openstack client talks to
// the cloud's services: the commands that have an API counterpart (backup
// start, cancel, list, show, delete, protect, unprotect, ls and get;
// restore start, list, show and cancel; clone start, list, delete and
// cancel; workload list; quota show) go through it when the command line names a cloud
// (--os-cloud), or when OS_CLOUD or OS_AUTH_URL is set and no operator
// target is (--repo, RAKSHA_REPO, --temporal, RAKSHA_TEMPORAL,
// TEMPORAL_ADDRESS): an operator's explicit repository or Temporal wins.

// apiMode says whether cmd goes through raksha-api.
func (a *app) apiMode(cmd *cobra.Command) bool {
	if cmd.Flags().Changed("os-cloud") || cmd.Flags().Changed("api-url") {
		return true
	}
	if a.getenv("OS_CLOUD") == "" && a.getenv("OS_AUTH_URL") == "" {
		return false
	}
	for _, f := range []string{"repo", "temporal"} {
		if fl := cmd.Flags().Lookup(f); fl != nil && fl.Changed {
			return false
		}
	}
	for _, v := range []string{"RAKSHA_REPO", "RAKSHA_TEMPORAL", "TEMPORAL_ADDRESS"} {
		if a.getenv(v) != "" {
			return false
		}
	}
	return true
}

// apiClient authenticates to Keystone as the openstack client would and
// finds raksha-api in the catalog (or at --api-url / RAKSHA_API_URL).
func (a *app) apiClient(ctx context.Context) (*apiclient.Client, error) {
	cfg := cloud.ConfigFromEnv(a.getenv)
	if a.osCloud != "" {
		cfg.Cloud = a.osCloud
	}
	cfg.Log = a.log
	endpoint := a.apiURL
	if endpoint == "" {
		endpoint = a.getenv("RAKSHA_API_URL")
	}
	return apiclient.New(ctx, apiclient.Options{Cloud: cfg, Endpoint: endpoint})
}

// notThroughAPI refuses, in API mode, flags only an operator has.
func notThroughAPI(cmd *cobra.Command, flags ...string) error {
	for _, f := range flags {
		if fl := cmd.Flags().Lookup(f); fl != nil && fl.Changed {
			return usagef("--%s is not offered through raksha-api (an operator's option: give --repo or --temporal)", f)
		}
	}
	return nil
}

// fields turns a view into its JSON fields.
func fields(v any) (map[string]any, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	return m, nil
}

// columnsOf is the columns to print: -c's, each checked against what the
// views have, or def.
func (a *app) columnsOf(def []string, rows []map[string]any, known []string) ([]string, error) {
	if len(a.columns) == 0 {
		return def, nil
	}
	have := map[string]bool{}
	for _, k := range known {
		have[k] = true
	}
	for _, r := range rows {
		for k := range r {
			have[k] = true
		}
	}
	for _, c := range a.columns {
		if !have[c] {
			names := make([]string, 0, len(have))
			for k := range have {
				names = append(names, k)
			}
			sort.Strings(names)
			return nil, usagef("-c %s: no such column (have %s)", c, strings.Join(names, ", "))
		}
	}
	return a.columns, nil
}

// cell is a value as a table or value line shows it.
func cell(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case float64, bool:
		return fmt.Sprint(x)
	default:
		data, _ := json.Marshal(x)
		return string(data)
	}
}

func pick(r map[string]any, cols []string) map[string]any {
	out := make(map[string]any, len(cols))
	for _, c := range cols {
		out[c] = r[c]
	}
	return out
}

// printList prints views as -f asks (table, json, yaml, value), with the
// columns of -c or def.
func (a *app) printList(views any, def []string) error {
	data, err := json.Marshal(views)
	if err != nil {
		return err
	}
	var rows []map[string]any
	if err := json.Unmarshal(data, &rows); err != nil {
		return err
	}
	cols, err := a.columnsOf(def, rows, def)
	if err != nil {
		return err
	}
	switch a.format {
	case "json", "yaml":
		out := make([]map[string]any, 0, len(rows))
		for _, r := range rows {
			out = append(out, pick(r, cols))
		}
		return a.printStructured(out)
	case "value":
		for _, r := range rows {
			vals := make([]string, len(cols))
			for i, c := range cols {
				vals[i] = cell(r[c])
			}
			fmt.Fprintln(a.stdout, strings.Join(vals, " "))
		}
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.ToUpper(strings.Join(cols, "\t")))
	for _, r := range rows {
		vals := make([]string, len(cols))
		for i, c := range cols {
			vals[i] = cell(r[c])
		}
		fmt.Fprintln(tw, strings.Join(vals, "\t"))
	}
	return tw.Flush()
}

// printOne prints one view: a field/value table, or json, yaml, or the
// values one per line; -c selects fields.
func (a *app) printOne(view any) error {
	m, err := fields(view)
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	cols, err := a.columnsOf(keys, []map[string]any{m}, keys)
	if err != nil {
		return err
	}
	switch a.format {
	case "json", "yaml":
		return a.printStructured(pick(m, cols))
	case "value":
		for _, c := range cols {
			fmt.Fprintln(a.stdout, cell(m[c]))
		}
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FIELD\tVALUE")
	for _, c := range cols {
		fmt.Fprintf(tw, "%s\t%s\n", c, cell(m[c]))
	}
	return tw.Flush()
}

func (a *app) printStructured(v any) error {
	if a.format == "yaml" {
		enc := yaml.NewEncoder(a.stdout)
		enc.SetIndent(2)
		if err := enc.Encode(v); err != nil {
			return err
		}
		return enc.Close()
	}
	return a.printJSON(v)
}

// apiPages fetches every page of a list, or one of limit items from marker.
func apiPages[T any](ctx context.Context, a *app, limit int, marker string, list func(context.Context, apiclient.ListOpts) ([]T, apiclient.Page, error)) ([]T, error) {
	var all []T
	opts := apiclient.ListOpts{Limit: limit, Marker: marker}
	for {
		page, next, err := list(ctx, opts)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next.Marker == "" {
			return all, nil
		}
		if limit > 0 {
			fmt.Fprintf(a.stderr, "more: --marker %s\n", next.Marker)
			return all, nil
		}
		opts.Marker = next.Marker
	}
}

// pageFlags are --limit and --marker of the lists through raksha-api.
type pageFlags struct {
	limit  int
	marker string
}

func (p *pageFlags) add(c *cobra.Command) {
	c.Flags().IntVar(&p.limit, "limit", 0, "through raksha-api: one page of at most this many (default: every page)")
	c.Flags().StringVar(&p.marker, "marker", "", "through raksha-api: the page after this one (the id or marker a --limit list printed)")
}

func (p pageFlags) check(cmd *cobra.Command, api bool) error {
	if !api && (cmd.Flags().Changed("limit") || cmd.Flags().Changed("marker")) {
		return usagef("--limit and --marker page the lists of raksha-api (--os-cloud)")
	}
	if p.limit < 0 {
		return usagef("--limit %d: want a positive number", p.limit)
	}
	return nil
}

var (
	backupColumns  = []string{"id", "project_id", "workload", "created_at", "consistency", "protected", "bytes_stored"}
	restoreColumns = []string{"id", "backup_id", "project_id", "status", "started_at", "closed_at"}
	cloneColumns   = []string{"id", "name", "backup_id", "project_id", "status", "started_at"}
)

// formats are the -f values; table and json for every command, yaml and
// value through raksha-api.
var formats = []string{"table", "json", "yaml", "value"}

func checkFormat(format string) error {
	if !slices.Contains(formats, format) {
		return usagef("-f %q: use table, json, yaml or value", format)
	}
	return nil
}

// apiAnnotation marks the commands that go through raksha-api in API mode.
const apiAnnotation = "raksha.api"

// viaAPI marks c as one with an API counterpart.
func viaAPI(c *cobra.Command) *cobra.Command {
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	c.Annotations[apiAnnotation] = "yes"
	return c
}

func (a *app) apiBackupList(ctx context.Context, pf pageFlags) error {
	c, err := a.apiClient(ctx)
	if err != nil {
		return err
	}
	list, err := apiPages(ctx, a, pf.limit, pf.marker, c.ListBackups)
	if err != nil {
		return err
	}
	return a.printList(list, backupColumns)
}

func (a *app) apiBackupShow(ctx context.Context, id string) error {
	c, err := a.apiClient(ctx)
	if err != nil {
		return err
	}
	b, err := c.GetBackup(ctx, id)
	if err != nil {
		return err
	}
	return a.printOne(b)
}

// apiRestoreStart starts a restore through raksha-api with the flags a
// tenant may give (hooks and health checks are the operator's).
func (a *app) apiRestoreStart(cmd *cobra.Command, backup string, rf *restoreFlags) error {
	if err := notThroughAPI(cmd, "wait"); err != nil {
		return err
	}
	nets, flavors, err := rf.mappings()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	c, err := a.apiClient(ctx)
	if err != nil {
		return err
	}
	r := rf.req
	v, err := c.StartRestore(ctx, apiclient.RestoreStartOpts{BackupID: backup, Repository: r.Repository, ProjectID: r.Project,
		VMs: r.VMs, Volumes: r.Volumes, NamePrefix: r.NamePrefix, Networks: nets, Flavors: flavors,
		KeepFixedIPs: r.KeepFixedIPs, InPlace: r.InPlace, NoWorkloadLabel: rf.noLabel, MaxParallelWrites: r.MaxParallelWrites})
	if err != nil {
		return err
	}
	return a.printOne(v)
}

func (a *app) apiRestoreShow(ctx context.Context, id string) error {
	c, err := a.apiClient(ctx)
	if err != nil {
		return err
	}
	v, err := c.GetRestore(ctx, id)
	if err != nil {
		return err
	}
	return a.printOne(v)
}

// apiRunList lists restores or clones (op) through raksha-api.
func (a *app) apiRunList(ctx context.Context, op string, pf pageFlags) error {
	c, err := a.apiClient(ctx)
	if err != nil {
		return err
	}
	if op == "clone" {
		list, err := apiPages(ctx, a, pf.limit, pf.marker, c.ListClones)
		if err != nil {
			return err
		}
		return a.printList(list, cloneColumns)
	}
	list, err := apiPages(ctx, a, pf.limit, pf.marker, c.ListRestores)
	if err != nil {
		return err
	}
	return a.printList(list, restoreColumns)
}

// apiRunCancel cancels a restore or a clone (op) through raksha-api.
func (a *app) apiRunCancel(ctx context.Context, op, id string) error {
	c, err := a.apiClient(ctx)
	if err != nil {
		return err
	}
	if op == "clone" {
		v, err := c.CancelClone(ctx, id)
		if err != nil {
			return err
		}
		return a.printOne(v)
	}
	v, err := c.CancelRestore(ctx, id)
	if err != nil {
		return err
	}
	return a.printOne(v)
}

func (a *app) apiCloneDelete(ctx context.Context, id string) error {
	c, err := a.apiClient(ctx)
	if err != nil {
		return err
	}
	v, err := c.DeleteClone(ctx, id)
	if err != nil {
		return err
	}
	return a.printOne(v)
}

// apiBackupStart starts a backup of a workload of the token's project
// through raksha-api: the servers whose metadata raksha.workload names it.
// Selectors, hooks, policies and freeze settings are the operator's.
func (a *app) apiBackupStart(cmd *cobra.Command, req workflows.BackupRequest) error {
	if err := notThroughAPI(cmd, "project", "policy", "on-app-failure", "freeze-timeout", "tag", "stack", "server-group",
		"server", "include", "exclude", "wait"); err != nil {
		return err
	}
	if req.Workload == "" {
		return usagef("--workload is required")
	}
	ctx := cmd.Context()
	c, err := a.apiClient(ctx)
	if err != nil {
		return err
	}
	v, err := c.StartBackup(ctx, apiclient.BackupStartOpts{Workload: req.Workload, Repository: req.Repository, Consistency: req.Consistency})
	if err != nil {
		return err
	}
	return a.printOne(v)
}

// apiBackupCancel cancels the running backup of a workload of the token's
// project through raksha-api.
func (a *app) apiBackupCancel(cmd *cobra.Command, workload string) error {
	if err := notThroughAPI(cmd, "project"); err != nil {
		return err
	}
	ctx := cmd.Context()
	c, err := a.apiClient(ctx)
	if err != nil {
		return err
	}
	id := strings.ReplaceAll(workflows.BackupWorkflowID(c.ProjectID(), workload), "/", "~")
	v, err := c.CancelBackupRun(ctx, id)
	if err != nil {
		return err
	}
	return a.printOne(v)
}

// apiBackupDelete deletes backups through raksha-api, one by one; it stops
// at the first refusal.
func (a *app) apiBackupDelete(ctx context.Context, ids []string) error {
	c, err := a.apiClient(ctx)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := c.DeleteBackup(ctx, id); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "deleted %s\n", id)
	}
	return nil
}

func (a *app) apiBackupProtect(ctx context.Context, ids []string, protect bool) error {
	c, err := a.apiClient(ctx)
	if err != nil {
		return err
	}
	var out []any
	for _, id := range ids {
		v, err := c.ProtectBackup(ctx, id, protect)
		if err != nil {
			return err
		}
		out = append(out, v)
	}
	return a.printList(out, []string{"id", "protected"})
}

// apiOnly is RunE for a command that exists only through raksha-api.
func (a *app) apiOnly(run func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if !a.apiMode(cmd) {
			return usagef("raksha %s works through raksha-api: give --os-cloud NAME or set OS_CLOUD (an operator reads the repository with --repo: raksha restore files, raksha mount)", cmd.CommandPath()[len("raksha "):])
		}
		return run(cmd, args)
	}
}

func (a *app) backupLsCmd() *cobra.Command {
	var partition int
	c := &cobra.Command{
		Use:   "ls BACKUP_ID DISK [PATH]",
		Short: "List a directory of a backed-up disk (DISK is VM~DISK, as 'backup show' gives it) through raksha-api",
		Args:  cobra.RangeArgs(2, 3),
	}
	c.RunE = a.apiOnly(func(cmd *cobra.Command, args []string) error {
		o := apiclient.FileOpts{BackupID: args[0], Disk: args[1], Path: "/", Partition: partition}
		if len(args) == 3 {
			o.Path = args[2]
		}
		cl, err := a.apiClient(cmd.Context())
		if err != nil {
			return err
		}
		files, err := cl.ListFiles(cmd.Context(), o)
		if err != nil {
			return err
		}
		return a.printList(files, []string{"name", "type", "size", "mode", "modified_at", "target"})
	})
	c.Flags().IntVar(&partition, "partition", 0, "partition number (default: the whole disk, or its only file system)")
	return c
}

func (a *app) backupGetCmd() *cobra.Command {
	var partition int
	var output string
	c := &cobra.Command{
		Use:   "get BACKUP_ID DISK PATH [--output FILE]",
		Short: "Download one file of a backed-up disk through raksha-api (to stdout, or --output)",
		Args:  cobra.ExactArgs(3),
	}
	c.RunE = a.apiOnly(func(cmd *cobra.Command, args []string) error {
		cl, err := a.apiClient(cmd.Context())
		if err != nil {
			return err
		}
		o := apiclient.FileOpts{BackupID: args[0], Disk: args[1], Path: args[2], Partition: partition}
		if output == "" || output == "-" {
			_, err := cl.DownloadFile(cmd.Context(), o, a.stdout)
			return err
		}
		f, err := os.OpenFile(output, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("--output: %w", err)
		}
		n, err := cl.DownloadFile(cmd.Context(), o, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(output)
			return err
		}
		fmt.Fprintf(a.stderr, "%s: %d bytes\n", output, n)
		return nil
	})
	c.Flags().IntVar(&partition, "partition", 0, "partition number (default: the whole disk, or its only file system)")
	c.Flags().StringVarP(&output, "output", "o", "", "write to this new file (refused if it exists) instead of stdout")
	return c
}

// workloadCmd and quotaCmd exist only through raksha-api.
func (a *app) workloadCmd() *cobra.Command {
	c := &cobra.Command{Use: "workload", Short: "The project's workloads as discovery finds them (through raksha-api)"}
	var project string
	list := viaAPI(&cobra.Command{Use: "list", Short: "List the project's workloads, their servers and volumes", Args: cobra.NoArgs})
	list.RunE = a.apiOnly(func(cmd *cobra.Command, args []string) error {
		cl, err := a.apiClient(cmd.Context())
		if err != nil {
			return err
		}
		ws, err := cl.ListWorkloads(cmd.Context(), project)
		if err != nil {
			return err
		}
		return a.printList(ws, []string{"name", "project_id", "servers"})
	})
	list.Flags().StringVar(&project, "project-id", "", "another project's (an admin's, or where you hold a role)")
	c.AddCommand(list)
	return c
}

func (a *app) quotaCmd() *cobra.Command {
	c := &cobra.Command{Use: "quota", Short: "The project's quotas and usage (through raksha-api)"}
	var project string
	show := viaAPI(&cobra.Command{Use: "show", Short: "Show the project's backup and byte quotas and their usage", Args: cobra.NoArgs})
	show.RunE = a.apiOnly(func(cmd *cobra.Command, args []string) error {
		cl, err := a.apiClient(cmd.Context())
		if err != nil {
			return err
		}
		q, err := cl.GetQuota(cmd.Context(), project)
		if err != nil {
			return err
		}
		return a.printOne(q)
	})
	show.Flags().StringVar(&project, "project-id", "", "another project's (an admin's, or where you hold a role)")
	c.AddCommand(show)
	return c
}

// apiCloneStart starts a clone through raksha-api into --to-project (a
// project id where the caller also holds a role); hooks and health checks
// are the operator's.
func (a *app) apiCloneStart(cmd *cobra.Command, backup, name string, rf *restoreFlags) error {
	if err := notThroughAPI(cmd, "post-hook", "health-check", "wait"); err != nil {
		return err
	}
	if rf.req.Project == "" {
		return usagef("--to-project (a project id) is required")
	}
	nets, flavors, err := rf.mappings()
	if err != nil {
		return err
	}
	if name == "" {
		name = "clone-" + randomSuffix()
	}
	ctx := cmd.Context()
	c, err := a.apiClient(ctx)
	if err != nil {
		return err
	}
	r := rf.req
	v, err := c.StartClone(ctx, apiclient.CloneStartOpts{Name: name, BackupID: backup, Repository: r.Repository, ProjectID: r.Project,
		VMs: r.VMs, NamePrefix: r.NamePrefix, Networks: nets, Flavors: flavors, KeepFixedIPs: r.KeepFixedIPs, MaxParallelWrites: r.MaxParallelWrites})
	if err != nil {
		return err
	}
	return a.printOne(v)
}
