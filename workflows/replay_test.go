package workflows

import (
	"path/filepath"
	"testing"

	"go.temporal.io/sdk/worker"
)

// TestReplayRecordedHistories replays WorkloadBackup histories recorded on
// a real Temporal server (integration.TestRecordBackupHistories) with
// today's code: a change that would break a running backup's replay (a
// new command without a workflow.GetVersion gate) fails here.
//   - history-2vms.json, history-40disks.json: recorded before the copy of
//     large workloads moved into child workflows (copies in the parent's
//     history, no version marker); the 40-disk one is above the child
//     threshold and must replay on the flat path.
func TestReplayRecordedHistories(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "history-*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no recorded histories: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflow(WorkloadBackup)
			if err := r.ReplayWorkflowHistoryFromJSONFile(nil, f); err != nil {
				t.Fatal(err)
			}
		})
	}
}
