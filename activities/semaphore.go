package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
)

// The semaphore protocol (workflows.Semaphore holds the permits; these
// names and types are shared with it, as package workflows imports this
// one and not the other way round).
const (
	// SemaphoreWorkflowType is the registered name of workflows.Semaphore.
	SemaphoreWorkflowType = "Semaphore"
	// SemaphoreAcquireSignal asks the semaphore for permits (SemaphoreRequest).
	SemaphoreAcquireSignal = "semaphore-acquire"
	// SemaphoreReleaseSignal gives permits back or withdraws waiting
	// requests (SemaphoreRelease).
	SemaphoreReleaseSignal = "semaphore-release"
	// SemaphoreResizeSignal changes the number of permits (an int).
	SemaphoreResizeSignal = "semaphore-resize"
)

// PermitGrantedSignal is the signal a semaphore sends to a requesting
// workflow for each permit it grants (a PermitGrant).
func PermitGrantedSignal(semaphoreID string) string { return "permit-granted/" + semaphoreID }

// SemaphoreRequest asks a semaphore for one permit per key, for one run of
// a workflow. It is the acquire signal's payload and AcquirePermits' input.
type SemaphoreRequest struct {
	// Semaphore is the semaphore's workflow id.
	Semaphore string `json:"semaphore"`
	// Permits is the semaphore's size if this request has to start it.
	Permits int `json:"permits,omitempty"`
	// WorkflowID and RunID are the requesting workflow run; grants are
	// signalled to it, and its permits are freed when it ends.
	WorkflowID string `json:"workflow_id"`
	RunID      string `json:"run_id"`
	// Keys name the permits, unique within the run (a copy's disk).
	Keys []string `json:"keys"`
	// Group is whose share the permits count toward when they are scarce:
	// the workflow a child run works for (a backup's copy children are one
	// backup). Empty: the run itself.
	Group string `json:"group,omitempty"`
}

// SemaphoreRelease returns a run's permits, or withdraws its requests.
type SemaphoreRelease struct {
	WorkflowID string   `json:"workflow_id"`
	RunID      string   `json:"run_id"`
	Keys       []string `json:"keys"`
}

// PermitGrant is the payload of PermitGrantedSignal.
type PermitGrant struct {
	Semaphore string `json:"semaphore"`
	Key       string `json:"key"`
}

// AcquireResult says how AcquirePermits went.
type AcquireResult struct {
	// Bypass is true when this worker has no Temporal client (unit tests,
	// test workers): there is no semaphore and the keys count as granted.
	Bypass bool `json:"bypass,omitempty"`
}

// WorkflowRun names one run of a workflow.
type WorkflowRun struct {
	WorkflowID string `json:"workflow_id"`
	RunID      string `json:"run_id"`
}

// ClosedRunsInput lists the runs whose state a semaphore wants to know.
type ClosedRunsInput struct {
	Runs []WorkflowRun `json:"runs"`
}

// ClosedRunsResult lists the runs that are no longer running (completed,
// failed, cancelled, terminated, timed out, continued as new, or unknown).
type ClosedRunsResult struct {
	Closed []WorkflowRun `json:"closed"`
}

// AcquirePermits asks a semaphore workflow for permits: it signals the
// semaphore, starting it first if it is not running (SignalWithStart).
// The grants come later, as PermitGrantedSignal signals to the requesting
// run. Repeating a request (an activity retry) is harmless: the semaphore
// ignores keys it already holds or queues.
func (a *Activities) AcquirePermits(ctx context.Context, in SemaphoreRequest) (*AcquireResult, error) {
	if a.cfg.Temporal == nil {
		a.logger(ctx).Debug("no Temporal client: semaphore bypassed", "semaphore", in.Semaphore, "keys", len(in.Keys))
		return &AcquireResult{Bypass: true}, nil
	}
	if in.Semaphore == "" || in.WorkflowID == "" || in.RunID == "" {
		return nil, invalid("acquire permits: semaphore, workflow id and run id are required")
	}
	permits := in.Permits
	if permits <= 0 {
		permits = 1
	}
	_, err := a.cfg.Temporal.SignalWithStartWorkflow(ctx, in.Semaphore, SemaphoreAcquireSignal, in,
		client.StartWorkflowOptions{
			ID:                    in.Semaphore,
			TaskQueue:             ControlQueue,
			WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
		},
		SemaphoreWorkflowType, SemaphoreStart{Permits: permits})
	if err != nil {
		return nil, fmt.Errorf("acquire permits of %s: signal-with-start: %w", in.Semaphore, err)
	}
	return &AcquireResult{}, nil
}

// SemaphoreStart is what a semaphore started by AcquirePermits begins with.
// (workflows.SemaphoreState has the same JSON shape and more fields.)
type SemaphoreStart struct {
	Permits int `json:"permits"`
}

// ClosedRuns reports which of the given workflow runs no longer run, so a
// semaphore can free the permits of holders that ended without releasing.
func (a *Activities) ClosedRuns(ctx context.Context, in ClosedRunsInput) (*ClosedRunsResult, error) {
	if a.cfg.Temporal == nil {
		return nil, temporal.NewNonRetryableApplicationError("closed runs: this worker has no Temporal client", ErrInvalid, nil)
	}
	res := &ClosedRunsResult{}
	for i, r := range in.Runs {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		desc, err := a.cfg.Temporal.DescribeWorkflowExecution(dctx, r.WorkflowID, r.RunID)
		cancel()
		var nf *serviceerror.NotFound
		switch {
		case errors.As(err, &nf):
			res.Closed = append(res.Closed, r)
		case err != nil:
			return nil, fmt.Errorf("closed runs: describe %s (run %s): %w", r.WorkflowID, r.RunID, err)
		case desc.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING:
			res.Closed = append(res.Closed, r)
		}
		activity.RecordHeartbeat(ctx, i)
	}
	return res, nil
}
