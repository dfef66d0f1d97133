package workflows

import (
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// Names of the metrics the workflows record, through the SDK's metrics
// handler (workflow.GetMetricsHandler, which records nothing while a
// workflow replays). The SDK adds its labels (namespace, task_queue,
// workflow_type) to those given here; a Prometheus export of a timer adds
// the unit: raksha_backup_duration_seconds (internal/metrics).
const (
	// MetricBackupDuration is a WorkloadBackup run's duration, from its
	// start (waiting for the workload's other backup included) to its end;
	// labels workload, repository, outcome (success, failure, cancelled).
	MetricBackupDuration = "raksha_backup_duration"
	// MetricRestoreDuration is a Restore (or Clone) run's duration; labels
	// operation (restore, clone), repository, outcome.
	MetricRestoreDuration = "raksha_restore_duration"
	// MetricCopyPermitWait is how long each disk copy waited for a permit
	// of the global copy semaphore; labels workload, repository.
	MetricCopyPermitWait = "raksha_copy_permit_wait"
)

// outcome names how a run ended, for the outcome label.
func outcome(err error) string {
	switch {
	case err == nil:
		return "success"
	case temporal.IsCanceledError(err):
		return "cancelled"
	}
	return "failure"
}

// recordDuration records the time from start to now under name, with tags
// and the outcome of err.
func recordDuration(ctx workflow.Context, name string, start time.Time, err error, tags map[string]string) {
	t := map[string]string{"outcome": outcome(err)}
	for k, v := range tags {
		t[k] = v
	}
	workflow.GetMetricsHandler(ctx).WithTags(t).Timer(name).Record(workflow.Now(ctx).Sub(start))
}
