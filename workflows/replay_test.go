package workflows

import (
	"os"
	"path/filepath"
	"testing"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

// recordedHistories are WorkloadBackup histories recorded on a real
// Temporal server with fake activities (integration.TestRecordBackupHistories),
// with the workflow id each ran under (child workflow ids derive from it;
// a history does not hold its own workflow id).
var recordedHistories = map[string]string{
	// Recorded before the copies of large workloads moved into child
	// workflows: copies in the backup's history, no version marker. The
	// 40-disk one is above the child threshold and must replay on the
	// flat path.
	"history-2vms.json":    "backup/shop",
	"history-40disks.json": "backup/big",
	// 40 disks in batches of 16: 3 CopyDisks children.
	"history-40disks-children.json": "backup/big",
	// After the freeze-on-cancel change (both version markers).
	"history-2vms-freeze-marker.json": "backup/shop",
	// After checkpoints finish on all VMs at once (three version markers).
	"history-2vms-parallel-finish.json": "backup/shop",
	// After workloads were keyed by project (tenant-isolation marker): a
	// project, user labels, an operator's hooks.
	"history-2vms-tenant-isolation.json": "backup/tenant-a/shop",
	// The first child of such a backup.
	"history-copydisks.json": "backup/big/copy/20261123-154531-261492/1",
	// The copy semaphore, recorded before it counted shares by group (no
	// marker): a 40-disk backup's children and a small backup. The
	// semaphore runs for long; its running history must replay.
	"history-semaphore-by-run.json": CopySemaphoreID,
	// Restore drills on the lab (TestRestoreDrillOfLabWorkload): one
	// started by its policy's schedule that passed, one whose health check
	// failed in a guest.
	"history-drill-pass.json": "drill/demo-2026-12-07T10:53:14Z",
	"history-drill-fail.json": DrillWorkflowID("demo"),
}

// TestReplayRecordedHistories replays the recorded histories with today's
// code: a change that would break a running backup's replay (a new command
// without a workflow.GetVersion gate) fails here.
func TestReplayRecordedHistories(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "history-*.json"))
	if err != nil || len(files) != len(recordedHistories) {
		t.Fatalf("recorded histories %v (%v), want %d", files, err, len(recordedHistories))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			id, ok := recordedHistories[filepath.Base(f)]
			if !ok {
				t.Fatalf("%s: not in recordedHistories", f)
			}
			r, err := os.Open(f)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			h, err := client.HistoryFromJSON(r, client.HistoryJSONOptions{})
			if err != nil {
				t.Fatal(err)
			}
			runID := h.Events[0].GetWorkflowExecutionStartedEventAttributes().GetOriginalExecutionRunId()
			rp := worker.NewWorkflowReplayer()
			rp.RegisterWorkflow(WorkloadBackup)
			rp.RegisterWorkflow(CopyDisks)
			rp.RegisterWorkflow(Semaphore)
			rp.RegisterWorkflow(RestoreDrill)
			if err := rp.ReplayWorkflowHistoryWithOptions(nil, h, worker.ReplayWorkflowHistoryOptions{
				OriginalExecution: workflow.Execution{ID: id, RunID: runID}}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
