package main

import (
	"fmt"
	"io"
	"log/slog"

	"go.temporal.io/sdk/log"

	"github.com/raksha-backup/raksha/internal/temporalx"
)

// newTemporalLogger adapts slog for the Temporal SDK, one level quieter.
func newTemporalLogger(l *slog.Logger) log.Logger {
	return log.NewStructuredLogger(l.With("component", "temporal"))
}

// newLogger is the worker's logger on w: format "text" (or "") or "json",
// at info level. The Temporal SDK's keys (WorkflowID, ActivityID, ...) are
// written as Raksha's (workflow_id, activity_id, ...), and a line logged
// with an activity's context carries its ids
// (temporalx.ActivityContextHandler).
func newLogger(w io.Writer, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: temporalx.RenameSDKKeys}
	switch format {
	case "", "text":
		return slog.New(temporalx.ActivityContextHandler(slog.NewTextHandler(w, opts))), nil
	case "json":
		return slog.New(temporalx.ActivityContextHandler(slog.NewJSONHandler(w, opts))), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}
