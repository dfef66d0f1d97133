package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/socket"
	"github.com/raksha-backup/raksha/internal/metrics"
)

func toGuestHooks(hs []Hook) []guest.Hook {
	out := make([]guest.Hook, len(hs))
	for i, h := range hs {
		out[i] = guest.Hook{Name: h.Name, Path: h.Path, Args: h.Args, Timeout: h.Timeout}
	}
	return out
}

// Freeze runs the pre-hooks and freezes the guest. The freeze handle stays in
// this worker: its guard thaws the guest at the deadline if Thaw does not
// come first. Run it with a single attempt. A guest whose agent does not
// answer is reported (NoAgent), not frozen.
func (a *Activities) Freeze(ctx context.Context, in FreezeInput) (*FreezeResult, error) {
	a.mu.Lock()
	if _, busy := a.freezes[in.Instance]; busy {
		a.mu.Unlock()
		return nil, invalid("instance %s is already frozen by this worker", in.Instance)
	}
	a.mu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := a.openAgent(dctx, in.Instance, guest.Options{Logger: a.logger(ctx), Owner: "raksha freeze " + activity.GetInfo(ctx).WorkflowExecution.ID})
	if errors.Is(err, guest.ErrNotAnswering) {
		return &FreezeResult{NoAgent: true}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("freeze %s: %w", in.Instance, err)
	}
	policy := guest.HookFail
	if in.HookFailure == "continue" {
		policy = guest.HookContinue
	}
	h, err := c.Freeze(ctx, guest.FreezeOptions{Timeout: in.Timeout, PreHooks: toGuestHooks(in.PreHooks),
		PostHooks: toGuestHooks(in.PostHooks), OnHookFailure: policy})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("freeze %s: %w", in.Instance, err)
	}
	a.mu.Lock()
	a.agents[in.Instance] = c
	a.freezes[in.Instance] = h
	a.mu.Unlock()
	return &FreezeResult{FreezeSent: h.FreezeSent, Deadline: h.Deadline}, nil
}

// Thaw thaws the guest and runs the post-hooks; it reports the freeze window
// and whether the guard had thawed first. Without a freeze handle (the
// worker restarted, or the freeze failed) it thaws any freeze it finds.
func (a *Activities) Thaw(ctx context.Context, in ThawInput) (*ThawResult, error) {
	wf := activity.GetInfo(ctx).WorkflowExecution.ID
	a.mu.Lock()
	h := a.freezes[in.Instance]
	c := a.agents[in.Instance]
	last, retried := a.thawed[in.Instance]
	a.mu.Unlock()
	if h == nil && retried && last.workflow == wf {
		r := last.res // a retry of a Thaw that thawed (its result was lost)
		return &r, nil
	}
	if h == nil {
		return a.thawOrphan(ctx, in.Instance)
	}
	rep, err := h.Thaw(ctx)
	if rep == nil {
		return nil, fmt.Errorf("thaw %s: %w", in.Instance, err)
	}
	res := &ThawResult{WasFrozen: true, GuardThawed: rep.GuardThawed, Window: rep.Window}
	if rep.GuardThawed {
		a.cfg.Metrics.Thawed(metrics.ThawedByGuard, 1)
	}
	a.mu.Lock()
	delete(a.freezes, in.Instance)
	delete(a.agents, in.Instance)
	a.thawed[in.Instance] = thawedFreeze{workflow: wf, res: *res}
	a.mu.Unlock()
	c.Close()
	if err != nil { // a post-hook failed under HookFail: the guest is thawed
		return res, temporal.NewNonRetryableApplicationError(fmt.Sprintf("thaw %s: %v", in.Instance, err), "HookFailed", err)
	}
	return res, nil
}

func (a *Activities) thawOrphan(ctx context.Context, instance string) (*ThawResult, error) {
	c, err := a.openAgent(ctx, instance, guest.Options{Logger: a.logger(ctx), Owner: "raksha thaw"})
	if errors.Is(err, guest.ErrNotAnswering) {
		return &ThawResult{}, nil // no agent, nothing frozen
	}
	if err != nil {
		return nil, fmt.Errorf("thaw %s: %w", instance, err)
	}
	defer c.Close()
	st, err := c.FsfreezeStatus(ctx)
	if err != nil {
		return nil, fmt.Errorf("thaw %s: %w", instance, err)
	}
	// The guest answers, yet this worker holds no freeze of it: the worker
	// that froze it is gone, and with it the freeze's timely thaw. The
	// window is unknown: call it guard-thawed, never app-consistent.
	const gone = "the host worker that froze it is gone (this worker holds no freeze of it)"
	if st != guest.Frozen {
		return &ThawResult{GuardThawed: true, Lost: gone + ": found thawed already (by the freeze watchdog at the deadline, or the orphan sweep of a restarted worker)"}, nil
	}
	if _, err := c.FsfreezeThaw(ctx); err != nil {
		return nil, fmt.Errorf("thaw %s: %w", instance, err)
	}
	a.cfg.Metrics.Thawed(metrics.ThawedLost, 1)
	return &ThawResult{WasFrozen: true, GuardThawed: true, Lost: gone + ": found still frozen, thawed now"}, nil
}

// thawedFreeze is the result of a guest's last thaw by its owner, returned
// to a retry of that Thaw (same workflow) instead of a lost-freeze report.
type thawedFreeze struct {
	workflow string
	res      ThawResult
}

// NewBitmapName is the bitmap of a backup's checkpoint on a qemu: disk.
func NewBitmapName(backupID string) string { return socket.BitmapName(backupID) }
