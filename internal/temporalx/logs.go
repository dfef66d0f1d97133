package temporalx

import (
	"context"
	"log/slog"

	"go.temporal.io/sdk/activity"
)

// Log keys naming where a line was written: Raksha's activity lines carry
// them (ActivityLogger), and RenameSDKKeys gives the Temporal SDK's own
// lines the same keys.
const (
	KeyWorkflowID   = "workflow_id"
	KeyRunID        = "run_id"
	KeyWorkflowType = "workflow_type"
	KeyActivityID   = "activity_id"
	KeyActivityType = "activity_type"
	KeyAttempt      = "attempt"
)

// ActivityLogger returns base with the workflow id, run id, workflow type,
// activity id, activity type and attempt of the activity ctx belongs to;
// base itself outside an activity.
func ActivityLogger(ctx context.Context, base *slog.Logger) *slog.Logger {
	if ctx == nil || !activity.IsActivity(ctx) {
		return base
	}
	info := activity.GetInfo(ctx)
	return base.With(KeyWorkflowID, info.WorkflowExecution.ID, KeyRunID, info.WorkflowExecution.RunID,
		KeyWorkflowType, info.WorkflowType.Name, KeyActivityID, info.ActivityID, KeyActivityType, info.ActivityType.Name,
		KeyAttempt, info.Attempt)
}

// sdkKeys are the keys the Temporal SDK's loggers tag their lines with, and
// Raksha's names for them.
var sdkKeys = map[string]string{
	"WorkflowID":   KeyWorkflowID,
	"RunID":        KeyRunID,
	"WorkflowType": KeyWorkflowType,
	"ActivityID":   KeyActivityID,
	"ActivityType": KeyActivityType,
	"Attempt":      KeyAttempt,
}

// RenameSDKKeys is a slog.HandlerOptions.ReplaceAttr that renames the
// Temporal SDK's keys (WorkflowID, RunID, ActivityID, ...) to Raksha's, so
// that one key finds a workflow's lines whoever wrote them.
func RenameSDKKeys(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 {
		if k, ok := sdkKeys[a.Key]; ok {
			a.Key = k
		}
	}
	return a
}

// ActivityContextHandler wraps h so that a line logged with the context of
// an activity (slog's InfoContext and the like, as the repository and the
// host drivers log) carries the activity's ids as ActivityLogger's do,
// unless the logger has them already.
func ActivityContextHandler(h slog.Handler) slog.Handler { return &ctxHandler{h: h} }

type ctxHandler struct {
	h      slog.Handler
	hasIDs bool
}

func (c *ctxHandler) Enabled(ctx context.Context, l slog.Level) bool { return c.h.Enabled(ctx, l) }

func (c *ctxHandler) Handle(ctx context.Context, r slog.Record) error {
	if !c.hasIDs && ctx != nil && activity.IsActivity(ctx) {
		info := activity.GetInfo(ctx)
		r = r.Clone()
		r.AddAttrs(slog.String(KeyWorkflowID, info.WorkflowExecution.ID), slog.String(KeyRunID, info.WorkflowExecution.RunID),
			slog.String(KeyWorkflowType, info.WorkflowType.Name), slog.String(KeyActivityID, info.ActivityID),
			slog.String(KeyActivityType, info.ActivityType.Name), slog.Int(KeyAttempt, int(info.Attempt)))
	}
	return c.h.Handle(ctx, r)
}

func (c *ctxHandler) WithAttrs(as []slog.Attr) slog.Handler {
	has := c.hasIDs
	for _, a := range as {
		has = has || a.Key == KeyActivityID || a.Key == "ActivityID"
	}
	return &ctxHandler{h: c.h.WithAttrs(as), hasIDs: has}
}

func (c *ctxHandler) WithGroup(name string) slog.Handler {
	return &ctxHandler{h: c.h.WithGroup(name), hasIDs: c.hasIDs}
}
