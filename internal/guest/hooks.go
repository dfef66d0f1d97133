package guest

import (
	"context"
	"fmt"
)

// RunHooks runs hooks in order through guest-exec, each within its timeout,
// outside any freeze (a workload's pre-hooks run on every guest before the
// coordinated freeze starts, so that a slow hook on one guest does not
// lengthen the others' freeze windows). With HookFail the first failure
// stops the run and is returned as a *HookError; with HookContinue every
// hook runs and failures are only logged and reported in the results.
func (c *Client) RunHooks(ctx context.Context, hooks []Hook, phase string, policy HookPolicy) ([]HookResult, error) {
	var out []HookResult
	for _, hk := range hooks {
		r := c.runHook(ctx, hk, phase)
		out = append(out, r)
		if r.Err == nil {
			continue
		}
		if policy == HookFail {
			return out, fmt.Errorf("guest agent %s: %s-hooks: %w", c.path, phase, &HookError{Result: r})
		}
		c.log.Warn("hook failed; going on", "phase", phase, "hook", hk.name(), "err", r.Err)
	}
	return out, nil
}
