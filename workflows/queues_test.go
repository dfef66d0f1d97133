package workflows

import (
	"context"
	"strings"
	"testing"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"

	"github.com/raksha-backup/raksha/activities"
)

// roleOfQueue is the worker role serving a task queue.
func roleOfQueue(q string) string {
	switch {
	case q == activities.ControlQueue:
		return activities.RoleControl
	case q == activities.DataQueue:
		return activities.RoleData
	case strings.HasPrefix(q, activities.HostQueue("")):
		return activities.RoleHost
	}
	return ""
}

// checkRoleQueues fails the test when the workflow under test schedules an
// activity on a task queue whose role's worker does not register it
// (activities.RoleActivities): a real worker would never run it.
func checkRoleQueues(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
	t.Helper()
	acts := activities.New(activities.Config{})
	env.SetOnActivityStartedListener(func(info *activity.Info, _ context.Context, _ converter.EncodedValues) {
		role := roleOfQueue(info.TaskQueue)
		if _, ok := activities.RoleActivities(acts, role)[info.ActivityType.Name]; !ok {
			t.Errorf("activity %s scheduled on %s, whose %q role does not register it", info.ActivityType.Name, info.TaskQueue, role)
		}
	})
}
