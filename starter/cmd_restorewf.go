package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"gopkg.in/yaml.v3"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/workflows"
)

// restoreFlags are the flags restore start and clone start share.
type restoreFlags struct {
	req       workflows.RestoreRequest
	networks  []string
	flavors   []string
	postHooks []string
	health    string
	noLabel   bool
	wait      bool
	mapFile   string
}

// restoreMap is the mapping file of --map-file: what to use instead of the
// captured networks and flavors (names or ids), e.g.
//
//	networks: {prod-net: staging-net}
//	flavors: {m1.large: m1.small}
type restoreMap struct {
	Networks map[string]string `yaml:"networks"`
	Flavors  map[string]string `yaml:"flavors"`
}

// readMapFile reads a mapping file; unknown keys and empty names are
// errors naming the file and the line.
func readMapFile(path string) (*restoreMap, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("--map-file: %v", err)
	}
	var m restoreMap
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&m); err != nil && !errors.Is(err, io.EOF) {
		return nil, usagef("--map-file %s: %v", path, err)
	}
	for what, mm := range map[string]map[string]string{"networks": m.Networks, "flavors": m.Flavors} {
		for k, v := range mm {
			if k == "" || v == "" {
				return nil, usagef("--map-file %s: %s: an empty name in %q: %q", path, what, k, v)
			}
		}
	}
	return &m, nil
}

func (rf *restoreFlags) add(c *cobra.Command, clone bool) {
	f := c.Flags()
	f.StringVar(&rf.req.Repository, "repository", "", "repository id (from the workers' registry)")
	f.StringArrayVar(&rf.req.VMs, "vm", nil, "restore only this server (name in the backup, captured name or id; repeatable)")
	f.StringVar(&rf.req.NamePrefix, "name-prefix", "", "put this before the names of new servers and volumes")
	f.StringArrayVar(&rf.networks, "map-network", nil, "OLD=NEW: put ports of network OLD (name or id) on NEW (repeatable)")
	f.StringArrayVar(&rf.flavors, "map-flavor", nil, "OLD=NEW: use flavor NEW instead of OLD (repeatable)")
	f.StringVar(&rf.mapFile, "map-file", "", "YAML mapping file {networks: {OLD: NEW}, flavors: {OLD: NEW}}; --map-network/--map-flavor win over it")
	f.BoolVar(&rf.req.KeepFixedIPs, "keep-ips", false, "ask for the captured fixed IPs on networks that are not remapped")
	f.BoolVar(&rf.wait, "wait", false, "wait and show progress")
	f.IntVar(&rf.req.MaxParallelWrites, "parallel-writes", 0, fmt.Sprintf("disks written at once (default %d)", workflows.DefaultParallelWrites))
	if clone {
		f.StringVar(&rf.req.Project, "to-project", "", "project to clone into (required)")
		f.StringArrayVar(&rf.postHooks, "post-hook", nil, "shell command to run in every cloned guest after it booted (repeatable; e.g. data masking)")
		f.StringVar(&rf.health, "health-check", "", "shell command run last in every cloned guest; non-zero fails and deletes the clone")
		return
	}
	f.StringVar(&rf.req.Project, "to-project", "", "project to restore into (default: the backup's)")
	f.StringArrayVar(&rf.req.Volumes, "volume", nil, "restore only this volume (captured id or name) to a new volume, without servers (repeatable)")
	f.BoolVar(&rf.req.InPlace, "in-place", false, "roll the captured servers back: stop, overwrite their disks, start")
	f.BoolVar(&rf.noLabel, "no-workload-label", false, "drop the raksha.workload label from new servers (they stay out of the workload's backups)")
}

func parseMap(flag string, pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" || v == "" {
			return nil, usagef("--%s %q: want OLD=NEW", flag, p)
		}
		m[k] = v
	}
	return m, nil
}

// mergeMap is base with over's entries on top (nil when both are empty).
func mergeMap(base, over map[string]string) map[string]string {
	if len(base) == 0 && len(over) == 0 {
		return nil
	}
	out := map[string]string{}
	maps.Copy(out, base)
	maps.Copy(out, over)
	return out
}

func shellHook(name, cmd string) activities.Hook {
	return activities.Hook{Name: name, Path: "/bin/sh", Args: []string{"-c", cmd}}
}

// mappings are the network and flavor maps of --map-network, --map-flavor
// and --map-file (the flags win over the file).
func (rf *restoreFlags) mappings() (nets, flavors map[string]string, err error) {
	if nets, err = parseMap("map-network", rf.networks); err != nil {
		return nil, nil, err
	}
	if flavors, err = parseMap("map-flavor", rf.flavors); err != nil {
		return nil, nil, err
	}
	if rf.mapFile != "" {
		m, err := readMapFile(rf.mapFile)
		if err != nil {
			return nil, nil, err
		}
		nets, flavors = mergeMap(m.Networks, nets), mergeMap(m.Flavors, flavors)
	}
	return nets, flavors, nil
}

// finish checks and completes the request from the flags.
func (rf *restoreFlags) finish(backup string) error {
	rf.req.BackupID = backup
	if rf.req.Repository == "" {
		return usagef("--repository is required")
	}
	var err error
	if rf.req.Networks, rf.req.Flavors, err = rf.mappings(); err != nil {
		return err
	}
	for i, h := range rf.postHooks {
		rf.req.PostHooks = append(rf.req.PostHooks, shellHook(fmt.Sprintf("post-hook-%d", i+1), h))
	}
	if rf.health != "" {
		h := shellHook("health-check", rf.health)
		rf.req.HealthCheck = &h
	}
	// The CLI talks to Temporal directly: its user is an operator.
	rf.req.Operator = true
	if rf.noLabel {
		rf.req.Metadata = map[string]string{cloud.WorkloadKey: ""}
	}
	if rf.req.InPlace && (rf.req.Project != "" || len(rf.req.Volumes) > 0 || rf.req.NamePrefix != "") {
		return usagef("--in-place rolls the captured servers back: it takes no --to-project, --volume or --name-prefix")
	}
	return nil
}

func randomSuffix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b)
}

func (a *app) restoreStartCmd() *cobra.Command {
	var tf temporalFlags
	var rf restoreFlags
	c := &cobra.Command{
		Use:   "start BACKUP --repository ID [--vm NAME]... [--to-project P] [--map-network OLD=NEW]... [--in-place] [--wait]",
		Short: "Restore a workload backup: new volumes and servers (or --in-place rollback, or --volume to new volumes)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.apiMode(cmd) {
				return a.apiRestoreStart(cmd, args[0], &rf)
			}
			if err := rf.finish(args[0]); err != nil {
				return err
			}
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			id := workflows.RestoreWorkflowID(args[0], randomSuffix())
			return a.startRestore(cmd.Context(), c, id, "restore", workflows.Restore, rf.req, rf.wait)
		},
	}
	tf.add(c)
	rf.add(c, false)
	return c
}

func (a *app) startRestore(ctx context.Context, c client.Client, id, op string, wf any, req any, wait bool) error {
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: activities.ControlQueue,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
		WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		TypedSearchAttributes:    temporal.NewSearchAttributes(workflows.SAOperation.ValueSet(op)),
		// Without it the SDK answers with the running run as if this call
		// had started it.
		WorkflowExecutionErrorWhenAlreadyStarted: true}, wf, req)
	if err != nil {
		var started *serviceerror.WorkflowExecutionAlreadyStarted
		if errors.As(err, &started) {
			return fmt.Errorf("%s %s exists already", op, id)
		}
		return fmt.Errorf("start %s: %w", op, err)
	}
	fmt.Fprintf(a.stderr, "started workflow %s (run %s)\n", run.GetID(), run.GetRunID())
	if !wait {
		if a.format == "json" {
			return a.printJSON(map[string]string{"workflow_id": run.GetID(), "run_id": run.GetRunID()})
		}
		fmt.Fprintf(a.stdout, "%s\n", run.GetID())
		return nil
	}
	res, err := a.followRestore(ctx, c, run)
	if err != nil {
		return fmt.Errorf("%s failed: %w", op, err)
	}
	return a.printRestoreResult(res)
}

func (a *app) printRestoreResult(res *workflows.RestoreResult) error {
	if a.format == "json" {
		return a.printJSON(res)
	}
	what := "restored"
	if res.InPlace {
		what = "rolled back in place"
	}
	rate := 0.0
	if res.WriteSeconds > 0 {
		rate = float64(res.BytesFetched) / res.WriteSeconds
	}
	fmt.Fprintf(a.stdout, "%s backup %s into project %s in %.1fs: %d servers, %d volumes, %d disks (%s of disk, %s fetched at %s/s)\n",
		what, res.BackupID, res.Project, res.Seconds, len(res.Servers), len(res.Volumes), len(res.Disks),
		humanBytes(res.Bytes), humanBytes(res.BytesFetched), humanBytes(int64(rate)))
	for _, s := range res.Servers {
		fmt.Fprintf(a.stdout, "  server %s (%s) from %s on %s\n", s.Name, s.ServerID, s.From, s.Host)
	}
	for _, v := range res.Volumes {
		fmt.Fprintf(a.stdout, "  volume %s from %s (%s)\n", v.VolumeID, v.From, v.Manifest)
	}
	for _, h := range res.Hooks {
		fmt.Fprintf(a.stdout, "  hook %s in %s: exit %d in %.1fs\n", h.Hook, h.VM, h.ExitCode, h.Seconds)
	}
	return nil
}

// followRestore shows a restore's progress: the phase (query) and the
// pending WriteDisk heartbeats (describe).
func (a *app) followRestore(ctx context.Context, c client.Client, run client.WorkflowRun) (*workflows.RestoreResult, error) {
	var res workflows.RestoreResult
	err := a.followRun(ctx, c, run, &res, "restore", func() (string, int64, int64) {
		var p workflows.RestoreProgress
		if v, err := c.QueryWorkflow(ctx, run.GetID(), run.GetRunID(), workflows.ProgressQuery); err == nil {
			_ = v.Get(&p)
		}
		if !strings.HasPrefix(p.Phase, "writing") {
			return p.Phase, 0, 0
		}
		doneBytes := p.BytesDone
		forPending(ctx, c, run.GetID(), run.GetRunID(), "WriteDisk", func(wp *activities.WriteDiskProgress) { doneBytes += wp.Done })
		return p.Phase, min(doneBytes, p.BytesTotal), p.BytesTotal
	})
	if err != nil {
		return nil, err
	}
	return &res, nil
}

// listRuns lists the workflows of an operation (restore, clone) from
// Temporal's visibility store.
func (a *app) listRuns(ctx context.Context, c client.Client, op string) error {
	resp, err := c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Query: fmt.Sprintf("RakshaOperation = '%s'", op), PageSize: 200})
	if err != nil {
		return fmt.Errorf("list %ss: %w", op, err)
	}
	type row struct {
		ID      string    `json:"workflow_id"`
		Status  string    `json:"status"`
		Start   time.Time `json:"start"`
		Close   time.Time `json:"close,omitzero"`
		Project string    `json:"project,omitempty"`
	}
	var rows []row
	for _, e := range resp.GetExecutions() {
		r := row{ID: e.GetExecution().GetWorkflowId(), Status: strings.TrimPrefix(e.GetStatus().String(), "WORKFLOW_EXECUTION_STATUS_"),
			Start: e.GetStartTime().AsTime()}
		if e.GetCloseTime() != nil {
			r.Close = e.GetCloseTime().AsTime()
		}
		if sa := e.GetSearchAttributes().GetIndexedFields()["RakshaProject"]; sa != nil {
			var p string
			if converter.GetDefaultDataConverter().FromPayload(sa, &p) == nil {
				r.Project = p
			}
		}
		rows = append(rows, r)
	}
	if a.format == "json" {
		return a.printJSON(rows)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tPROJECT\tSTARTED\tCLOSED")
	for _, r := range rows {
		closed := ""
		if !r.Close.IsZero() {
			closed = r.Close.Local().Format("2006-01-02 15:04:05")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.ID, r.Status, r.Project, r.Start.Local().Format("2006-01-02 15:04:05"), closed)
	}
	return tw.Flush()
}

func (a *app) restoreListCmd(op string) *cobra.Command {
	var tf temporalFlags
	var pf pageFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "List " + op + "s (running and finished) from Temporal (or raksha-api)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			api := a.apiMode(cmd)
			if err := pf.check(cmd, api); err != nil {
				return err
			}
			if api {
				return a.apiRunList(cmd.Context(), op, pf)
			}
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			return a.listRuns(cmd.Context(), c, op)
		},
	}
	tf.add(c)
	pf.add(c)
	return c
}

func (a *app) restoreShowCmd() *cobra.Command {
	var tf temporalFlags
	c := &cobra.Command{
		Use:   "show RESTORE_ID",
		Short: "Show a restore's progress, or its result once it finished",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if a.apiMode(cmd) {
				return a.apiRestoreShow(ctx, args[0])
			}
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			desc, err := c.DescribeWorkflowExecution(ctx, args[0], "")
			if err != nil {
				var nf *serviceerror.NotFound
				if errors.As(err, &nf) {
					return fmt.Errorf("no restore %s", args[0])
				}
				return err
			}
			if desc.GetWorkflowExecutionInfo().GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
				var p workflows.RestoreProgress
				v, err := c.QueryWorkflow(ctx, args[0], "", workflows.ProgressQuery)
				if err != nil {
					return fmt.Errorf("query %s: %w", args[0], err)
				}
				if err := v.Get(&p); err != nil {
					return err
				}
				if a.format == "json" {
					return a.printJSON(p)
				}
				fmt.Fprintf(a.stdout, "%s: %s; disks %d/%d; %s of %s\n", args[0], p.Phase, p.DisksDone, p.Disks, humanBytes(p.BytesDone), humanBytes(p.BytesTotal))
				return nil
			}
			var res workflows.RestoreResult
			if err := c.GetWorkflow(ctx, args[0], "").Get(ctx, &res); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return a.printRestoreResult(&res)
		},
	}
	tf.add(c)
	return c
}

func (a *app) restoreCancelCmd(op string) *cobra.Command {
	var tf temporalFlags
	c := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a running " + op + " (what it made is deleted)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.apiMode(cmd) {
				return a.apiRunCancel(cmd.Context(), op, args[0])
			}
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			if err := c.CancelWorkflow(cmd.Context(), args[0], ""); err != nil {
				var nf *serviceerror.NotFound
				if errors.As(err, &nf) {
					return fmt.Errorf("no running %s %s", op, args[0])
				}
				return fmt.Errorf("cancel %s: %w", args[0], err)
			}
			fmt.Fprintf(a.stdout, "cancel requested for %s\n", args[0])
			return nil
		},
	}
	tf.add(c)
	return c
}

func (a *app) cloneCmd() *cobra.Command {
	c := &cobra.Command{Use: "clone", Short: "Staging clones: a backup restored into another project, labelled, torn down in one command"}
	c.AddCommand(viaAPI(a.cloneStartCmd()), viaAPI(a.cloneDeleteCmd()), viaAPI(a.restoreListCmd("clone")), viaAPI(a.restoreCancelCmd("clone")))
	return c
}

func (a *app) cloneStartCmd() *cobra.Command {
	var tf temporalFlags
	var rf restoreFlags
	var name string
	c := &cobra.Command{
		Use:   "start BACKUP --repository ID --to-project P --name NAME [--name-prefix stg-] [--map-network OLD=NEW]... [--post-hook CMD]... [--health-check CMD] [--wait]",
		Short: "Clone a workload backup into another project, run post-restore hooks and a health check",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.apiMode(cmd) {
				return a.apiCloneStart(cmd, args[0], name, &rf)
			}
			if err := rf.finish(args[0]); err != nil {
				return err
			}
			if rf.req.Project == "" {
				return usagef("--to-project is required")
			}
			if name == "" {
				name = "clone-" + randomSuffix()
			}
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			return a.startRestore(cmd.Context(), c, workflows.CloneWorkflowID(name), "clone", workflows.Clone,
				workflows.CloneRequest{Name: name, RestoreRequest: rf.req}, rf.wait)
		},
	}
	tf.add(c)
	rf.add(c, true)
	c.Flags().StringVar(&name, "name", "", "clone name (its workflow id is clone/NAME; default generated)")
	return c
}

func (a *app) cloneDeleteCmd() *cobra.Command {
	var tf temporalFlags
	var project string
	c := &cobra.Command{
		Use:   "delete NAME --project P",
		Short: "Tear a clone down: every server and volume labelled raksha.clone=NAME in the project",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if a.apiMode(cmd) {
				if err := notThroughAPI(cmd, "project"); err != nil {
					return err
				}
				return a.apiCloneDelete(ctx, args[0])
			}
			if project == "" {
				return usagef("--project is required")
			}
			name := strings.TrimPrefix(args[0], "clone/")
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "clone-delete/" + name + "/" + randomSuffix(),
				TaskQueue: activities.ControlQueue}, workflows.CloneDelete, workflows.CloneDeleteRequest{Name: name, Project: project})
			if err != nil {
				return fmt.Errorf("start clone delete: %w", err)
			}
			var res workflows.CloneDeleteResult
			if err := run.Get(ctx, &res); err != nil {
				return fmt.Errorf("delete clone %s: %w", name, err)
			}
			if a.format == "json" {
				return a.printJSON(res)
			}
			fmt.Fprintf(a.stdout, "clone %s deleted: %d servers, %d volumes\n", name, len(res.Servers), len(res.Volumes))
			return nil
		},
	}
	tf.add(c)
	c.Flags().StringVar(&project, "project", "", "the clone's project (required)")
	return c
}
