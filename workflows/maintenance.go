package workflows

import (
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/repo"
)

// MaintenanceWorkflowID is the fixed workflow id of a repository's
// maintenance: one run at a time per repository, scheduled or manual.
func MaintenanceWorkflowID(repository string) string { return "maintenance/" + repository }

// MaintenanceRequest is the input of RepositoryMaintenance: what to do to
// the repository, in this order.
type MaintenanceRequest struct {
	Repository string `json:"repository"`
	// PruneExpired removes every expired, unprotected backup, whatever its
	// workload (also those of workloads whose policy is gone).
	PruneExpired bool `json:"prune_expired"`
	// GC collects unreferenced chunks; GCGrace is its grace period
	// (0: repo.DefaultGCGrace).
	GC      bool          `json:"gc"`
	GCGrace time.Duration `json:"gc_grace,omitempty"`
	// Verify is "", "check" (structure) or "full" (every chunk re-read).
	Verify string `json:"verify,omitempty"`
}

// MaintenanceResult is what a maintenance run did.
type MaintenanceResult struct {
	Pruned []string      `json:"pruned,omitempty"`
	GC     *repo.GCStats `json:"gc,omitempty"`
	// GCSkipped says why gc did not run (another gc held the lease).
	GCSkipped string                   `json:"gc_skipped,omitempty"`
	Verify    *activities.VerifyResult `json:"verify,omitempty"`
}

// RepositoryMaintenance prunes expired backups, collects garbage and checks
// or verifies the repository, each as an activity on the control queue.
// A gc skipped because another holds the lease is recorded, not a failure;
// damage found by verify fails the run (visible in the Web UI) with the
// damaged chunks and backups named. Query "progress" says which step runs.
func RepositoryMaintenance(ctx workflow.Context, req MaintenanceRequest) (*MaintenanceResult, error) {
	if req.Repository == "" {
		return nil, temporal.NewNonRetryableApplicationError("maintenance: no repository", activities.ErrInvalid, nil)
	}
	_ = workflow.UpsertTypedSearchAttributes(ctx, SAOperation.ValueSet("maintenance"))
	step := "starting"
	if err := workflow.SetQueryHandler(ctx, "progress", func() (string, error) { return step, nil }); err != nil {
		return nil, err
	}
	res := &MaintenanceResult{}
	long := func(timeout time.Duration) workflow.Context {
		return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
			TaskQueue:           activities.ControlQueue,
			StartToCloseTimeout: timeout,
			HeartbeatTimeout:    time.Minute,
			RetryPolicy: &temporal.RetryPolicy{InitialInterval: 5 * time.Second, BackoffCoefficient: 2, MaximumInterval: 5 * time.Minute,
				MaximumAttempts: 3, NonRetryableErrorTypes: append([]string{activities.ErrGCRunning, activities.ErrVerifyFailed}, activities.NonRetryable...)},
		})
	}
	if req.PruneExpired {
		step = "prune expired backups"
		var pr activities.PruneResult
		if err := workflow.ExecuteActivity(long(time.Hour), a.PruneExpired, activities.PruneExpiredInput{Repository: req.Repository}).Get(ctx, &pr); err != nil {
			return res, fmt.Errorf("maintenance of %s: %w", req.Repository, err)
		}
		res.Pruned = pr.Removed
	}
	if req.GC {
		step = "gc"
		grace := req.GCGrace
		if grace == 0 {
			grace = -1 // the default
		}
		var st repo.GCStats
		err := workflow.ExecuteActivity(long(12*time.Hour), a.CollectGarbage, activities.GCInput{Repository: req.Repository, Grace: grace}).Get(ctx, &st)
		var ae *temporal.ApplicationError
		switch {
		case errors.As(err, &ae) && ae.Type() == activities.ErrGCRunning:
			res.GCSkipped = ae.Message()
			workflow.GetLogger(ctx).Warn("gc skipped", "reason", ae.Message())
		case err != nil:
			return res, fmt.Errorf("maintenance of %s: %w", req.Repository, err)
		default:
			res.GC = &st
		}
	}
	if req.Verify != "" {
		step = req.Verify
		var vr activities.VerifyResult
		err := workflow.ExecuteActivity(long(24*time.Hour), a.VerifyRepository, activities.VerifyInput{Repository: req.Repository, Mode: req.Verify}).Get(ctx, &vr)
		var ae *temporal.ApplicationError
		if errors.As(err, &ae) && ae.Type() == activities.ErrVerifyFailed {
			// The run fails with the damage's own type, so the Web UI and
			// whoever waits on the run see what was found, not a wrapper.
			return res, temporal.NewNonRetryableApplicationError(fmt.Sprintf("maintenance of %s: %s", req.Repository, ae.Message()), activities.ErrVerifyFailed, err)
		}
		if err != nil {
			return res, fmt.Errorf("maintenance of %s: %w", req.Repository, err)
		}
		res.Verify = &vr
	}
	step = "done"
	return res, nil
}
