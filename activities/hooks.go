package activities

import (
	"context"
	"errors"
	"fmt"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/internal/guest"
)

// RunHooksInput runs a workload's hooks in one guest, outside the freeze.
type RunHooksInput struct {
	Instance string `json:"instance"`
	// Phase is "pre" or "post".
	Phase       string `json:"phase"`
	Hooks       []Hook `json:"hooks"`
	HookFailure string `json:"hook_failure,omitempty"` // "fail" (default) or "continue"
}

// RunHooksResult says what ran.
type RunHooksResult struct {
	// NoAgent is true when the guest agent did not answer: nothing ran.
	NoAgent bool `json:"no_agent"`
	Ran     int  `json:"ran"`
	// Failed names the hooks that failed (under "continue").
	Failed []string `json:"failed,omitempty"`
}

// RunHooks runs hooks in the guest through its agent. Under "fail" a failed
// hook fails the activity (non-retryable, type HookFailed); a guest whose
// agent does not answer is reported (NoAgent). Run it with a single attempt:
// hooks are not idempotent.
func (a *Activities) RunHooks(ctx context.Context, in RunHooksInput) (*RunHooksResult, error) {
	if in.Phase != "pre" && in.Phase != "post" {
		return nil, invalid("hooks of phase %q: want pre or post", in.Phase)
	}
	c, err := a.openAgent(ctx, in.Instance, guest.Options{Logger: a.logger(ctx), Owner: "raksha hooks " + activity.GetInfo(ctx).WorkflowExecution.ID})
	if errors.Is(err, guest.ErrNotAnswering) {
		return &RunHooksResult{NoAgent: true}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s-hooks in %s: %w", in.Phase, in.Instance, err)
	}
	defer c.Close()
	policy := guest.HookFail
	if in.HookFailure == "continue" {
		policy = guest.HookContinue
	}
	results, err := c.RunHooks(ctx, toGuestHooks(in.Hooks), in.Phase, policy)
	res := &RunHooksResult{Ran: len(results)}
	for _, r := range results {
		if r.Err != nil {
			res.Failed = append(res.Failed, fmt.Sprintf("%s: %v", r.Hook.Path, r.Err))
		}
	}
	if err != nil {
		return res, temporal.NewNonRetryableApplicationError(fmt.Sprintf("%s-hooks in %s: %v", in.Phase, in.Instance, err), "HookFailed", err)
	}
	return res, nil
}
