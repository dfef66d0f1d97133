package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/temporalx"
	"github.com/raksha-backup/raksha/workflows"
)

// temporalFlags are the flags of commands that talk to Temporal.
type temporalFlags struct {
	address, namespace string
	tls                temporalx.TLS
}

func (f *temporalFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.address, "temporal", "", "Temporal frontend HOST:PORT (env RAKSHA_TEMPORAL, else TEMPORAL_ADDRESS or the TEMPORAL_PROFILE of the Temporal config file, else 127.0.0.1:7233)")
	c.Flags().StringVar(&f.namespace, "namespace", "", "Temporal namespace (env RAKSHA_NAMESPACE, else TEMPORAL_NAMESPACE or the profile's, else \"default\")")
	c.Flags().StringVar(&f.tls.CertFile, "tls-cert", "", "client certificate for mutual TLS to Temporal")
	c.Flags().StringVar(&f.tls.KeyFile, "tls-key", "", "key of the client certificate")
	c.Flags().StringVar(&f.tls.CAFile, "tls-ca", "", "CA certificate of Temporal's server certificate")
	c.Flags().StringVar(&f.tls.ServerName, "tls-server-name", "", "name to check in Temporal's server certificate")
}

// temporalOptions resolves the client's options: the flags, then
// RAKSHA_TEMPORAL and RAKSHA_NAMESPACE, then the standard Temporal
// environment and config file profile (temporalx.ClientOptions), then the
// defaults.
func (a *app) temporalOptions(f temporalFlags) (client.Options, error) {
	addr, ns := f.address, f.namespace
	if addr == "" {
		addr = a.getenv("RAKSHA_TEMPORAL")
	}
	if ns == "" {
		ns = a.getenv("RAKSHA_NAMESPACE")
	}
	opts, err := temporalx.ClientOptions(temporalx.Settings{Address: addr, Namespace: ns, TLS: f.tls}, temporalx.Env{Get: a.getenv, List: os.Environ})
	if err != nil {
		return client.Options{}, usageError{err}
	}
	return opts, nil
}

func (a *app) temporalClient(f temporalFlags) (client.Client, error) {
	opts, err := a.temporalOptions(f)
	if err != nil {
		return nil, err
	}
	opts.Logger = quietTemporalLogger{}
	c, err := client.Dial(opts)
	if err != nil {
		return nil, fmt.Errorf("connect to Temporal at %s: %w", opts.HostPort, err)
	}
	return c, nil
}

func (a *app) backupStartCmd() *cobra.Command {
	var tf temporalFlags
	var req workflows.BackupRequest
	var wait bool
	c := &cobra.Command{
		Use:   "start --workload W --repository ID [--consistency app|crash] [--wait]",
		Short: "Start a workload backup (a Temporal workflow); --wait shows its progress",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if a.apiMode(cmd) {
				return a.apiBackupStart(cmd, req)
			}
			if req.Workload == "" || req.Repository == "" {
				return usagef("--workload and --repository are required")
			}
			if req.Consistency != "app" && req.Consistency != "crash" {
				return usagef("--consistency %q: app or crash", req.Consistency)
			}
			sel := req.Selector
			if sel.Workload == "" && sel.Tag == "" && sel.Stack == "" && sel.ServerGroup == "" && len(sel.ServerIDs) == 0 {
				req.Selector.Workload = req.Workload
			}
			// The CLI talks to Temporal directly: its user is an operator.
			req.Operator = true
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			sa := temporal.NewSearchAttributes(workflows.SAWorkload.ValueSet(req.Workload), workflows.SAOperation.ValueSet("backup"),
				workflows.SAProject.ValueSet(req.Project), workflows.SAPolicy.ValueSet(req.Policy))
			run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
				ID: workflows.BackupWorkflowID(req.Project, req.Workload), TaskQueue: activities.ControlQueue,
				WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
				WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
				TypedSearchAttributes:    sa,
				// Without it the SDK answers with the running backup's run
				// as if this call had started it.
				WorkflowExecutionErrorWhenAlreadyStarted: true,
			}, workflows.WorkloadBackup, req)
			if err != nil {
				var started *serviceerror.WorkflowExecutionAlreadyStarted
				if errors.As(err, &started) {
					return fmt.Errorf("a backup of workload %s is already running (workflow %s)", req.Workload, workflows.BackupWorkflowID(req.Project, req.Workload))
				}
				return fmt.Errorf("start backup: %w", err)
			}
			fmt.Fprintf(a.stderr, "started workflow %s (run %s)\n", run.GetID(), run.GetRunID())
			if !wait {
				if a.format == "json" {
					return a.printJSON(map[string]string{"workflow_id": run.GetID(), "run_id": run.GetRunID()})
				}
				return nil
			}
			res, err := a.follow(ctx, c, run)
			if err != nil {
				return err
			}
			if a.format == "json" {
				return a.printJSON(res)
			}
			fmt.Fprintf(a.stdout, "backup %s (%s): %d VMs, %d disks; read %s, new %s, reused %s, stored %s\n", res.BackupID, res.Consistency,
				res.VMs, len(res.Disks), humanBytes(res.BytesRead), humanBytes(res.BytesNew), humanBytes(res.BytesReused), humanBytes(res.BytesStored))
			for vm, w := range res.FreezeWindows {
				fmt.Fprintf(a.stdout, "  freeze window %s: %v\n", vm, w.Round(time.Millisecond))
			}
			for _, w := range res.Warnings {
				fmt.Fprintf(a.stdout, "  warning: %s\n", w)
			}
			return nil
		},
	}
	tf.add(c)
	f := c.Flags()
	f.StringVar(&req.Workload, "workload", "", "workload name (servers with metadata raksha.workload=NAME unless another selector is given)")
	f.StringVar(&req.Repository, "repository", "", "repository id (from the workers' registry)")
	f.StringVar(&req.Project, "project", "", "project of the workload")
	f.StringVar(&req.Policy, "policy", "", "policy name to label the backup with")
	f.StringVar(&req.Consistency, "consistency", "app", "app (freeze the guests) or crash")
	f.StringVar(&req.OnAppFailure, "on-app-failure", "fail", "when a guest cannot be frozen: fail, or crash (go on crash-consistent)")
	f.DurationVar(&req.FreezeTimeout, "freeze-timeout", 10*time.Second, "longest a guest may stay frozen")
	f.StringVar(&req.Selector.Tag, "tag", "", "select servers by Nova tag")
	f.StringVar(&req.Selector.Stack, "stack", "", "select the servers of a Heat stack")
	f.StringVar(&req.Selector.ServerGroup, "server-group", "", "select the members of a server group")
	f.StringSliceVar(&req.Selector.ServerIDs, "server", nil, "select servers by id (repeatable)")
	f.StringVar(&req.Selector.Include, "include", "", "keep only servers whose name matches this regex")
	f.StringVar(&req.Selector.Exclude, "exclude", "", "drop servers whose name matches this regex")
	f.BoolVar(&wait, "wait", false, "wait for the backup and show its progress")
	return c
}

// follow shows a running backup's progress — the workflow's phase (query)
// and the pending copies' heartbeats (describe) — until it ends.
func (a *app) follow(ctx context.Context, c client.Client, run client.WorkflowRun) (*workflows.BackupResult, error) {
	var res workflows.BackupResult
	err := a.followRun(ctx, c, run, &res, "copy", func() (string, int64, int64) {
		var p workflows.Progress
		if v, err := c.QueryWorkflow(ctx, run.GetID(), run.GetRunID(), workflows.ProgressQuery); err == nil {
			_ = v.Get(&p)
		}
		if p.Phase != "copy" {
			return p.Phase, 0, 0
		}
		// The copies run in the backup itself or, for a large workload,
		// in its CopyDisks children.
		var doneBytes, total int64
		for i, id := range append([]string{run.GetID()}, p.CopyWorkflows...) {
			runID := ""
			if i == 0 {
				runID = run.GetRunID()
			}
			forPending(ctx, c, id, runID, "CopyDisk", func(cp *activities.CopyProgress) {
				doneBytes += cp.Done
				total += cp.Total
			})
		}
		return p.Phase, doneBytes, total
	})
	if err != nil {
		return nil, fmt.Errorf("backup failed: %w", err)
	}
	return &res, nil
}

// followRun waits for run's result in out, printing each new phase and
// feeding a progress bar named label. poll, called every half second,
// returns the phase and, when known (total > 0), the bytes done.
func (a *app) followRun(ctx context.Context, c client.Client, run client.WorkflowRun, out any, label string,
	poll func() (phase string, done, total int64)) error {
	finished := make(chan error, 1)
	go func() { finished <- run.Get(ctx, out) }()
	var bar *progressReporter
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	lastPhase := ""
	for {
		select {
		case err := <-finished:
			if bar != nil {
				bar.finish()
			}
			return err
		case <-tick.C:
			phase, done, total := poll()
			if phase != lastPhase && phase != "" {
				fmt.Fprintf(a.stderr, "phase: %s\n", phase)
				lastPhase = phase
			}
			if total > 0 {
				if bar == nil {
					bar = a.newProgress(label, total)
				}
				bar.update(repo.Progress{Done: done, Total: total})
			}
		}
	}
}

// forPending calls fn with the heartbeat details of every pending activity
// of type activityType in workflow id (runID "" for the latest run).
func forPending[T any](ctx context.Context, c client.Client, id, runID, activityType string, fn func(*T)) {
	desc, err := c.DescribeWorkflowExecution(ctx, id, runID)
	if err != nil {
		return
	}
	for _, pa := range desc.GetPendingActivities() {
		if pa.GetActivityType().GetName() != activityType || pa.GetHeartbeatDetails() == nil {
			continue
		}
		var v T
		if converter.GetDefaultDataConverter().FromPayloads(pa.GetHeartbeatDetails(), &v) == nil {
			fn(&v)
		}
	}
}

// quietTemporalLogger drops the SDK's logs: the CLI reports what matters.
type quietTemporalLogger struct{}

func (quietTemporalLogger) Debug(string, ...any) {}
func (quietTemporalLogger) Info(string, ...any)  {}
func (quietTemporalLogger) Warn(string, ...any)  {}
func (quietTemporalLogger) Error(string, ...any) {}

func (a *app) backupCancelCmd() *cobra.Command {
	var tf temporalFlags
	var project string
	c := &cobra.Command{
		Use:   "cancel [--project P] WORKLOAD",
		Short: "Cancel the running backup of a workload (guests are thawed, nothing is committed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.apiMode(cmd) {
				return a.apiBackupCancel(cmd, args[0])
			}
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			id := workflows.BackupWorkflowID(project, args[0])
			if err := c.CancelWorkflow(cmd.Context(), id, ""); err != nil {
				var nf *serviceerror.NotFound
				if errors.As(err, &nf) {
					return fmt.Errorf("no backup of workload %s is running", args[0])
				}
				return fmt.Errorf("cancel %s: %w", id, err)
			}
			fmt.Fprintf(a.stdout, "cancel requested for %s\n", id)
			return nil
		},
	}
	tf.add(c)
	c.Flags().StringVar(&project, "project", "", "project of the workload, as the backup was started with")
	return c
}

func (a *app) temporalSetupCmd() *cobra.Command {
	var tf temporalFlags
	c := &cobra.Command{
		Use:   "temporal-setup",
		Short: "Register Raksha's search attributes (RakshaWorkload, RakshaProject, RakshaOperation, RakshaPolicy, RakshaBackup, RakshaDrill) in the namespace",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := a.temporalOptions(tf)
			if err != nil {
				return err
			}
			c, err := a.temporalClient(tf)
			if err != nil {
				return err
			}
			defer c.Close()
			ns := opts.Namespace
			added, err := temporalx.EnsureSearchAttributes(cmd.Context(), c, ns)
			if err != nil {
				return err
			}
			if len(added) == 0 {
				fmt.Fprintf(a.stdout, "namespace %s already has Raksha's search attributes\n", ns)
				return nil
			}
			fmt.Fprintf(a.stdout, "registered in namespace %s: %v\n", ns, added)
			return nil
		},
	}
	tf.add(c)
	return c
}
