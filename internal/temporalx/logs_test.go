package temporalx

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/testsuite"
)

// TestActivityLogLines runs an activity in the SDK's test environment that
// logs three ways: through ActivityLogger, with its context through a
// plain logger (the ActivityContextHandler path, as the repository logs),
// and without its context. The first two carry the workflow id, run id,
// activity id and type once each; the third none.
func TestActivityLogLines(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(ActivityContextHandler(slog.NewJSONHandler(&buf, &slog.HandlerOptions{ReplaceAttr: RenameSDKKeys})))
	logIt := func(ctx context.Context) error {
		ActivityLogger(ctx, base).Info("through ActivityLogger")
		base.InfoContext(ctx, "with the context")
		base.Info("without the context")
		return nil
	}
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivityWithOptions(logIt, activity.RegisterOptions{Name: "LogIt"})
	if _, err := env.ExecuteActivity("LogIt"); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3:\n%s", len(lines), buf.String())
	}
	for i, l := range lines {
		if strings.Count(l, `"activity_id"`) > 1 {
			t.Errorf("line %d repeats the ids: %s", i, l)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", i, err, l)
		}
		ids := []string{KeyWorkflowID, KeyRunID, KeyActivityID, KeyActivityType}
		for _, k := range ids {
			v, ok := m[k].(string)
			switch {
			case i < 2 && (!ok || v == ""):
				t.Errorf("line %d (%s) has no %s: %s", i, m["msg"], k, l)
			case i == 2 && ok:
				t.Errorf("line %d (%s) has %s without a context: %s", i, m["msg"], k, l)
			}
		}
		if i < 2 && m[KeyActivityType] != "LogIt" {
			t.Errorf("line %d: activity type %v, want LogIt", i, m[KeyActivityType])
		}
	}
}

// TestRenameSDKKeys: the SDK's keys are written as Raksha's.
func TestRenameSDKKeys(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{ReplaceAttr: RenameSDKKeys}))
	l.With("WorkflowID", "wf", "ActivityID", "7").Info("sdk line", "RunID", "r1", "ActivityType", "CopyDisk")
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{KeyWorkflowID: "wf", KeyActivityID: "7", KeyRunID: "r1", KeyActivityType: "CopyDisk"} {
		if m[k] != want {
			t.Errorf("%s = %v, want %q (line %s)", k, m[k], want, buf.String())
		}
	}
}
