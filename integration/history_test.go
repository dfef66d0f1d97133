package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/workflows"
)

// fakeActs stands in for activities.Activities under the same activity
// names: WorkloadBackup runs on a real Temporal server with no cloud, guest
// or repository, so that its histories can be measured and recorded.
type fakeActs struct {
	vms []activities.VM
	// block makes CopyDisk heartbeat until it is cancelled.
	block     atomic.Bool
	cancelled atomic.Int32
	// sem, if set, holds the real semaphore activities (AcquirePermits,
	// ClosedRuns); else AcquirePermits bypasses the semaphores. hold is how
	// long a copy takes; running and maxRunning count copies at once.
	sem                 *activities.Activities
	hold                time.Duration
	running, maxRunning atomic.Int32
	// freezeDelay is how long a freeze takes; freezing counts those begun;
	// frozenAt and thawedAt are when each instance's last freeze ended and
	// its last thaw ran.
	freezeDelay        time.Duration
	freezing           atomic.Int32
	frozenAt, thawedAt map[string]time.Time

	// stopDelay is how long a cancelled copy takes to stop (flushing what
	// it wrote); lastCopyEnd is when the last cancelled copy returned and
	// abortAt when Abort ran.
	stopDelay            time.Duration
	lastCopyEnd, abortAt time.Time
	cancelledAtAbort     int32

	mu     sync.Mutex
	copier map[string]string // disk manifest → workflow id that ran its copy
	groups map[string]int    // copy permits asked for, by the request's group
}

func (f *fakeActs) Begin(_ context.Context, in activities.BeginInput) (*activities.BeginResult, error) {
	return &activities.BeginResult{BackupID: in.BackupID, VMs: f.vms}, nil
}

func (f *fakeActs) AcquirePermits(ctx context.Context, in activities.SemaphoreRequest) (*activities.AcquireResult, error) {
	if f.sem != nil {
		f.mu.Lock()
		if f.groups == nil {
			f.groups = map[string]int{}
		}
		if in.Semaphore == workflows.CopySemaphoreID {
			f.groups[in.Group] += len(in.Keys)
		}
		f.mu.Unlock()
		return f.sem.AcquirePermits(ctx, in)
	}
	return &activities.AcquireResult{Bypass: true}, nil
}

func (f *fakeActs) ClosedRuns(ctx context.Context, in activities.ClosedRunsInput) (*activities.ClosedRunsResult, error) {
	return f.sem.ClosedRuns(ctx, in)
}

func (f *fakeActs) Freeze(_ context.Context, in activities.FreezeInput) (*activities.FreezeResult, error) {
	f.freezing.Add(1)
	time.Sleep(f.freezeDelay)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozenAt == nil {
		f.frozenAt = map[string]time.Time{}
	}
	f.frozenAt[in.Instance] = time.Now()
	return &activities.FreezeResult{}, nil
}

func (f *fakeActs) Checkpoint(_ context.Context, in activities.CheckpointInput) (*activities.CheckpointResult, error) {
	return &activities.CheckpointResult{Bitmap: activities.NewBitmapName(in.BackupID)}, nil
}

func (f *fakeActs) Thaw(_ context.Context, in activities.ThawInput) (*activities.ThawResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.thawedAt == nil {
		f.thawedAt = map[string]time.Time{}
	}
	f.thawedAt[in.Instance] = time.Now()
	return &activities.ThawResult{WasFrozen: true, Window: 120 * time.Millisecond}, nil
}

func (f *fakeActs) CopyDisk(ctx context.Context, in activities.CopyInput) (*activities.CopyResult, error) {
	m := in.BackupID + "/" + in.VM + "/" + in.Disk.Name
	f.mu.Lock()
	if f.copier == nil {
		f.copier = map[string]string{}
	}
	f.copier[m] = activity.GetInfo(ctx).WorkflowExecution.ID
	f.mu.Unlock()
	n := f.running.Add(1)
	defer f.running.Add(-1)
	for {
		old := f.maxRunning.Load()
		if n <= old || f.maxRunning.CompareAndSwap(old, n) {
			break
		}
	}
	time.Sleep(f.hold)
	for f.block.Load() {
		activity.RecordHeartbeat(ctx, activities.CopyProgress{})
		select {
		case <-ctx.Done():
			time.Sleep(f.stopDelay)
			f.mu.Lock()
			f.lastCopyEnd = time.Now()
			f.mu.Unlock()
			f.cancelled.Add(1)
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return &activities.CopyResult{Manifest: m, Size: in.Disk.Size, BytesRead: in.Disk.Size, BytesNew: in.Disk.Size / 2,
		BytesReused: in.Disk.Size / 2, BytesStored: in.Disk.Size / 3}, nil
}

func (f *fakeActs) FinishCheckpoint(context.Context, activities.FinishInput) error { return nil }

func (f *fakeActs) Commit(_ context.Context, in activities.CommitInput) (*activities.CommitResult, error) {
	return &activities.CommitResult{BackupID: in.BackupID, Disks: len(in.Manifests)}, nil
}

func (f *fakeActs) Abort(context.Context, activities.AbortInput) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.abortAt = time.Now()
	f.cancelledAtAbort = f.cancelled.Load()
	return nil
}

func (f *fakeActs) ResolveProject(_ context.Context, in activities.ResolveProjectInput) (string, error) {
	return "id-of-" + in.Project, nil
}

func (f *fakeActs) RunHooks(_ context.Context, in activities.RunHooksInput) (*activities.RunHooksResult, error) {
	return &activities.RunHooksResult{Ran: len(in.Hooks)}, nil
}

func (f *fakeActs) Prune(context.Context, activities.PruneInput) (*activities.PruneResult, error) {
	return &activities.PruneResult{}, nil
}

// fakeWorkload is vms VMs of disks qemu: disks each, on host h1.
func fakeWorkload(vms, disks int) []activities.VM {
	var out []activities.VM
	for i := range vms {
		vm := activities.VM{ID: fmt.Sprint(i), Name: fmt.Sprintf("vm%02d", i), Host: "h1", Instance: fmt.Sprintf("instance-%d", i)}
		for j := range disks {
			vm.Disks = append(vm.Disks, activities.Disk{Name: fmt.Sprintf("vd%c", 'a'+j), Size: 1 << 30,
				Locator: activities.Locator(fmt.Sprintf("qemu:h1/instance-%d/drive%d", i, j))})
		}
		out = append(out, vm)
	}
	return out
}

// startFakeWorkers runs the workflows with fakeActs on the control queue
// and the queue of host h1.
func startFakeWorkers(t *testing.T, c client.Client, f *fakeActs) {
	t.Helper()
	for _, q := range []string{activities.ControlQueue, activities.HostQueue("h1")} {
		w := worker.New(c, q, workerOptions())
		if q == activities.ControlQueue {
			registerBackupWorkflows(w)
			w.RegisterWorkflow(workflows.Semaphore)
		}
		w.RegisterActivity(f)
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Stop)
	}
}

// history reads a workflow run's whole history.
func history(t *testing.T, c client.Client, id, runID string) *historypb.History {
	t.Helper()
	h := &historypb.History{}
	it := c.GetWorkflowHistory(context.Background(), id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		h.Events = append(h.Events, ev)
	}
	return h
}

// runFakeBackup runs one WorkloadBackup of f's workload and returns its
// result and history.
func runFakeBackup(t *testing.T, c client.Client, id string, req workflows.BackupRequest) (*workflows.BackupResult, *historypb.History, string) {
	t.Helper()
	ctx := context.Background()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: activities.ControlQueue}, workflows.WorkloadBackup, req)
	if err != nil {
		t.Fatal(err)
	}
	var res workflows.BackupResult
	if err := run.Get(ctx, &res); err != nil {
		t.Fatal(err)
	}
	return &res, history(t, c, id, run.GetRunID()), run.GetRunID()
}

// TestRecordBackupHistories records WorkloadBackup histories on a real
// server and replays each with today's code. With RAKSHA_RECORD_HISTORIES
// naming a directory (workflows/testdata) it keeps them there for the replay
// tests of package workflows; files that exist are kept: each is the code of
// the commit that recorded it (the 2vms and 40disks ones predate the child
// copy workflows). Without it they go to a temporary directory.
func TestRecordBackupHistories(t *testing.T) {
	dir := os.Getenv("RAKSHA_RECORD_HISTORIES")
	if dir == "" {
		dir = t.TempDir()
	}
	c, _ := startTemporal(t)
	f := &fakeActs{}
	startFakeWorkers(t, c, f)
	for _, tc := range []struct {
		name       string
		vms, disks int
		req        workflows.BackupRequest
	}{
		{"2vms", 2, 2, workflows.BackupRequest{Workload: "shop", Repository: "main", Consistency: "app", Retention: activities.Retention{Daily: 7}}},
		{"40disks", 4, 10, workflows.BackupRequest{Workload: "big", Repository: "main", Consistency: "crash"}},
		{"40disks-children", 4, 10, workflows.BackupRequest{Workload: "big", Repository: "main", Consistency: "app", CopyBatchSize: 16}},
		// The first CopyDisks child of such a backup (its own history).
		{"copydisks", 4, 10, workflows.BackupRequest{Workload: "big", Repository: "main", Consistency: "app", CopyBatchSize: 16}},
		// With the freeze-on-cancel marker too.
		{"2vms-freeze-marker", 2, 2, workflows.BackupRequest{Workload: "shop", Repository: "main", Consistency: "app", Retention: activities.Retention{Daily: 7}}},
		// With the finish-in-parallel marker too: checkpoints finish on all VMs at once.
		{"2vms-parallel-finish", 2, 2, workflows.BackupRequest{Workload: "shop", Repository: "main", Consistency: "app", Retention: activities.Retention{Daily: 7}}},
		// With the tenant-isolation marker: a project (the lock by its id,
		// prune by project), user labels, an operator's hooks.
		{"2vms-tenant-isolation", 2, 2, workflows.BackupRequest{Workload: "shop", Project: "tenant-a", Repository: "main", Consistency: "app",
			Retention: activities.Retention{Daily: 7}, Labels: map[string]string{"team": "a"}, Operator: true,
			PreHooks: []activities.Hook{{Path: "/bin/true"}}, PostHooks: []activities.Hook{{Path: "/bin/true"}}}},
	} {
		out := filepath.Join(dir, "history-"+tc.name+".json")
		if _, err := os.Stat(out); err == nil {
			t.Logf("%s exists: kept", out)
			continue
		}
		f.vms = fakeWorkload(tc.vms, tc.disks)
		id := workflows.BackupWorkflowID(tc.req.Project, tc.req.Workload)
		res, h, _ := runFakeBackup(t, c, id, tc.req)
		if tc.name == "copydisks" {
			id = workflows.CopyWorkflowID(id, res.BackupID, 1)
			h = history(t, c, id, "")
		}
		rp := worker.NewWorkflowReplayer()
		registerBackupWorkflows(rp)
		runID := h.Events[0].GetWorkflowExecutionStartedEventAttributes().GetOriginalExecutionRunId()
		if err := rp.ReplayWorkflowHistoryWithOptions(nil, h, worker.ReplayWorkflowHistoryOptions{
			OriginalExecution: workflow.Execution{ID: id, RunID: runID}}); err != nil {
			t.Fatalf("%s: today's code does not replay the history it just made: %v", tc.name, err)
		}
		b, err := protojson.MarshalOptions{Indent: "  "}.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d events", out, len(h.Events))
	}
}

// registerBackupWorkflows registers WorkloadBackup and what it starts.
func registerBackupWorkflows(w worker.WorkflowRegistry) {
	w.RegisterWorkflow(workflows.WorkloadBackup)
	w.RegisterWorkflow(workflows.CopyDisks)
}

// TestLargeWorkloadHistoryBounded runs WorkloadBackup of a 100-disk workload
// (10 VMs of 10 disks; fake activities) on a real Temporal server: the
// copies run in ceil(100/32) = 4 CopyDisks children, the backup's own
// history holds none of them and stays under a bound that does not grow
// with the disks, each child's under one that grows with its batch only;
// the flat path (threshold off) writes every copy into the backup's
// history; both give the same result.
func TestLargeWorkloadHistoryBounded(t *testing.T) {
	c, _ := startTemporal(t)
	const vms, disks = 10, 10
	f := &fakeActs{vms: fakeWorkload(vms, disks)}
	startFakeWorkers(t, c, f)
	req := workflows.BackupRequest{Workload: "big", Repository: "main", Consistency: "app"}

	start := time.Now()
	res, h, _ := runFakeBackup(t, c, "backup/big", req)
	took := time.Since(start)
	var children []string
	for _, ev := range h.Events {
		if a := ev.GetStartChildWorkflowExecutionInitiatedEventAttributes(); a != nil {
			children = append(children, a.GetWorkflowId())
			if a.GetParentClosePolicy() != enumspb.PARENT_CLOSE_POLICY_REQUEST_CANCEL {
				t.Errorf("child %s: parent close policy %v", a.GetWorkflowId(), a.GetParentClosePolicy())
			}
		}
		if a := ev.GetActivityTaskScheduledEventAttributes(); a != nil && a.GetActivityType().GetName() == "CopyDisk" {
			t.Fatalf("the backup itself scheduled a copy (event %d)", ev.GetEventId())
		}
	}
	if len(children) != 4 {
		t.Fatalf("%d child workflows %v, want 4", len(children), children)
	}
	maxChild := 0
	for _, id := range children {
		ch := history(t, c, id, "")
		maxChild = max(maxChild, len(ch.Events))
		if last := ch.Events[len(ch.Events)-1]; last.GetWorkflowExecutionCompletedEventAttributes() == nil {
			t.Errorf("child %s ended with %v", id, last.GetEventType())
		}
	}
	f.mu.Lock()
	for m, wf := range f.copier {
		if !strings.HasPrefix(wf, "backup/big/copy/"+res.BackupID+"/") {
			t.Errorf("%s copied by %s", m, wf)
		}
	}
	copied := len(f.copier)
	f.copier = nil
	f.mu.Unlock()
	if copied != vms*disks || len(res.Disks) != vms*disks {
		t.Fatalf("copied %d, result has %d disks; want %d", copied, len(res.Disks), vms*disks)
	}

	flatReq := req
	flatReq.ChildCopyThreshold = -1
	start = time.Now()
	flat, fh, _ := runFakeBackup(t, c, "backup/big", flatReq)
	flatTook := time.Since(start)
	t.Logf("100 disks, 10 VMs: with 4 child workflows the backup's history has %d events (largest child %d) in %v; flat, %d events in %v",
		len(h.Events), maxChild, took.Round(time.Millisecond), len(fh.Events), flatTook.Round(time.Millisecond))
	// The parent's events: a fixed part, the per-VM freeze, checkpoint,
	// thaw and checkpoint finishes, and a few per child; nothing per disk.
	if bound := 60 + 26*vms + 8*len(children); len(h.Events) > bound {
		t.Errorf("the backup's history has %d events, more than %d", len(h.Events), bound)
	}
	// Twice the disks on the same VMs: only the children's events are more.
	f.vms = fakeWorkload(vms, 2*disks)
	res2, h2, _ := runFakeBackup(t, c, "backup/big", req)
	children2 := 0
	for _, ev := range h2.Events {
		if ev.GetStartChildWorkflowExecutionInitiatedEventAttributes() != nil {
			children2++
		}
	}
	t.Logf("200 disks, 10 VMs: %d child workflows, the backup's history has %d events", children2, len(h2.Events))
	if len(res2.Disks) != 2*vms*disks || children2 != 7 || len(h2.Events)-len(h.Events) > 8*(children2-len(children)) {
		t.Errorf("200 disks: %d disks, %d children (want 7), %d events (100 disks: %d)", len(res2.Disks), children2, len(h2.Events), len(h.Events))
	}
	f.vms = fakeWorkload(vms, disks)
	if bound := 30 + 8*workflows.DefaultCopyBatchSize; maxChild > bound {
		t.Errorf("a child's history has %d events, more than %d", maxChild, bound)
	}
	// The flat path holds each copy's three activity events (scheduled,
	// started, completed) itself. (How many workflow tasks its completions
	// take depends on how they bunch, so total lengths are not compared.)
	copyEvents, copyIDs := 0, map[int64]bool{}
	for _, ev := range fh.Events {
		if a := ev.GetActivityTaskScheduledEventAttributes(); a != nil && a.GetActivityType().GetName() == "CopyDisk" {
			copyIDs[ev.GetEventId()] = true
			copyEvents++
		}
		if a := ev.GetActivityTaskStartedEventAttributes(); a != nil && copyIDs[a.GetScheduledEventId()] {
			copyEvents++
		}
		if a := ev.GetActivityTaskCompletedEventAttributes(); a != nil && copyIDs[a.GetScheduledEventId()] {
			copyEvents++
		}
	}
	if copyEvents != 3*vms*disks {
		t.Errorf("flat history (%d events) holds %d events of copies, want 3 for each of %d", len(fh.Events), copyEvents, vms*disks)
	}
	flat.BackupID = res.BackupID
	for i := range flat.Disks {
		flat.Disks[i].Manifest = strings.Replace(flat.Disks[i].Manifest, flat.Disks[i].Manifest[:strings.Index(flat.Disks[i].Manifest, "/")], res.BackupID, 1)
	}
	if !reflect.DeepEqual(res, flat) {
		t.Errorf("results differ:\nchildren %+v\nflat     %+v", res, flat)
	}
}

// TestTerminatedBackupCancelsItsCopyChildren: a large backup is terminated
// while its children copy; the parent close policy cancels every child,
// their copies are cancelled, nothing keeps running.
func TestTerminatedBackupCancelsItsCopyChildren(t *testing.T) {
	c, _ := startTemporal(t)
	ctx := context.Background()
	f := &fakeActs{vms: fakeWorkload(4, 10)}
	run := startBlockedCopies(t, c, f, "big")
	var children []string
	for _, ev := range history(t, c, run.GetID(), run.GetRunID()).Events {
		if a := ev.GetStartChildWorkflowExecutionInitiatedEventAttributes(); a != nil {
			children = append(children, a.GetWorkflowId())
		}
	}
	if len(children) != 3 {
		t.Fatalf("children %v, want 3", children)
	}
	if err := c.TerminateWorkflow(ctx, run.GetID(), run.GetRunID(), "test: the backup is terminated"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	eventually(t, 30*time.Second, "a child still runs after its parent was terminated", func() bool {
		for _, id := range children {
			d, err := c.DescribeWorkflowExecution(ctx, id, "")
			if err != nil {
				t.Fatal(err)
			}
			if d.GetWorkflowExecutionInfo().GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
				return false
			}
		}
		return true
	})
	for _, id := range children {
		d, _ := c.DescribeWorkflowExecution(ctx, id, "")
		if st := d.GetWorkflowExecutionInfo().GetStatus(); st != enumspb.WORKFLOW_EXECUTION_STATUS_CANCELED {
			t.Errorf("child %s ended %v, want cancelled", id, st)
		}
	}
	eventually(t, 10*time.Second, "copies still run", func() bool { return f.cancelled.Load() == 40 })
	t.Logf("3 children and their 40 copies cancelled %v after the backup was terminated", time.Since(start).Round(time.Millisecond))
}

// startBlockedCopies starts a crash-consistent backup of f's workload (4
// VMs of 10 disks: 3 copy children) whose copies block until cancelled, and
// returns once the children started all 40.
func startBlockedCopies(t *testing.T, c client.Client, f *fakeActs, workload string) client.WorkflowRun {
	t.Helper()
	f.block.Store(true)
	startFakeWorkers(t, c, f)
	run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: "backup/" + workload, TaskQueue: activities.ControlQueue},
		workflows.WorkloadBackup, workflows.BackupRequest{Workload: workload, Repository: "main", Consistency: "crash", CopyBatchSize: 16,
			CopyHeartbeatTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the children did not start every copy", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.copier) == 40
	})
	return run
}

// TestCancelledBackupAbortsAfterItsLastCopy: a large backup is cancelled
// while its children copy, and its copies take a second to stop (as a real
// copy finishing a chunk); the backup aborts only after the last of them
// returned, so that nothing is written for a backup already aborted.
func TestCancelledBackupAbortsAfterItsLastCopy(t *testing.T) {
	c, _ := startTemporal(t)
	ctx := context.Background()
	f := &fakeActs{vms: fakeWorkload(4, 10), stopDelay: time.Second}
	run := startBlockedCopies(t, c, f, "big-cancel")
	if err := c.CancelWorkflow(ctx, run.GetID(), run.GetRunID()); err != nil {
		t.Fatal(err)
	}
	var ce *temporal.CanceledError
	if err := run.Get(ctx, nil); !errors.As(err, &ce) {
		t.Fatalf("the cancelled backup ended with %v, want cancelled", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := f.cancelled.Load(); n != 40 {
		t.Errorf("%d copies saw the cancellation, want 40", n)
	}
	if f.cancelledAtAbort != 40 || f.abortAt.IsZero() || !f.abortAt.After(f.lastCopyEnd) {
		t.Errorf("abort at %v with %d copies stopped, the last copy stopped at %v: the abort must come after all 40", f.abortAt.Format(time.StampMicro), f.cancelledAtAbort, f.lastCopyEnd.Format(time.StampMicro))
	}
	t.Logf("the abort ran %v after the last copy stopped", f.abortAt.Sub(f.lastCopyEnd).Round(time.Millisecond))
}

// TestLargeWorkloadUnderCopySemaphore: the 100 copies of a large workload,
// spread over 4 children, go through the real copy semaphore (15 permits):
// never more than 15 at once, all of them done, every permit back.
func TestLargeWorkloadUnderCopySemaphore(t *testing.T) {
	c, _ := startTemporal(t)
	f := &fakeActs{vms: fakeWorkload(10, 10), hold: 300 * time.Millisecond,
		sem: activities.New(activities.Config{Temporal: c, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})}
	startFakeWorkers(t, c, f)
	start := time.Now()
	res, h, _ := runFakeBackup(t, c, "backup/big", workflows.BackupRequest{Workload: "big", Repository: "main", Consistency: "app"})
	took := time.Since(start)
	var children []string
	for _, ev := range h.Events {
		if a := ev.GetStartChildWorkflowExecutionInitiatedEventAttributes(); a != nil {
			children = append(children, a.GetWorkflowId())
		}
	}
	maxChild := 0
	for _, id := range children {
		maxChild = max(maxChild, len(history(t, c, id, "").Events))
	}
	t.Logf("100 copies of 300 ms through %d children and the copy semaphore in %v: at most %d at once; the backup's history %d events, largest child %d",
		len(children), took.Round(time.Millisecond), f.maxRunning.Load(), len(h.Events), maxChild)
	if len(res.Disks) != 100 || len(children) != 4 {
		t.Fatalf("%d disks through %d children", len(res.Disks), len(children))
	}
	if m := f.maxRunning.Load(); m > workflows.DefaultCopyPermits || m < 2 {
		t.Errorf("%d copies at once, want 2..%d", m, workflows.DefaultCopyPermits)
	}
	if bound := 30 + 11*workflows.DefaultCopyBatchSize; maxChild > bound {
		t.Errorf("a child's history has %d events, more than %d", maxChild, bound)
	}
	eventually(t, 10*time.Second, "permits left held", func() bool {
		st := semaphoreState(t, c, workflows.CopySemaphoreID)
		return len(st.Holders) == 0 && len(st.Waiting) == 0 && st.Granted == 100
	})
	// The children asked as one share: their backup's.
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.groups) != 1 || f.groups["backup/big"] != 100 {
		t.Errorf("copy permits asked for by group %v, want all 100 for backup/big", f.groups)
	}
}

// TestCancelDuringFreezeThawsAfterIt: a backup cancelled while its guests'
// freezes run (each takes a second) thaws each guest after its freeze has
// ended, not before (a thaw that overtakes the freeze leaves the guest
// frozen until the host guard's deadline).
func TestCancelDuringFreezeThawsAfterIt(t *testing.T) {
	c, _ := startTemporal(t)
	ctx := context.Background()
	f := &fakeActs{vms: fakeWorkload(2, 1), freezeDelay: time.Second}
	startFakeWorkers(t, c, f)
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "backup/shop", TaskQueue: activities.ControlQueue}, workflows.WorkloadBackup,
		workflows.BackupRequest{Workload: "shop", Repository: "main", Consistency: "app"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the freezes did not begin", func() bool { return f.freezing.Load() == 2 })
	if err := c.CancelWorkflow(ctx, run.GetID(), run.GetRunID()); err != nil {
		t.Fatal(err)
	}
	if err := run.Get(ctx, nil); err == nil {
		t.Fatal("the cancelled backup succeeded")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, vm := range f.vms {
		frozen, thawed := f.frozenAt[vm.Instance], f.thawedAt[vm.Instance]
		if frozen.IsZero() || thawed.Before(frozen) {
			t.Errorf("%s: frozen at %v, thawed at %v: the thaw came before the freeze ended", vm.Instance, frozen, thawed)
		}
	}
}

// TestBurstOfHostActivitiesStartsPromptly runs WorkloadBackup of 20 VMs on
// one host (fake activities) on a real dev server, with the workers'
// ActivityPollers: every freeze, checkpoint, thaw and checkpoint finish,
// scheduled for all VMs at once, starts within a second of being
// scheduled. With the SDK's default two pollers some waited 2 s, inside
// the freeze window for the checkpoints and thaws.
func TestBurstOfHostActivitiesStartsPromptly(t *testing.T) {
	c, _ := startTemporal(t)
	f := &fakeActs{vms: fakeWorkload(20, 1)}
	startFakeWorkers(t, c, f)
	for i := range 3 {
		start := time.Now()
		_, h, _ := runFakeBackup(t, c, fmt.Sprintf("backup/burst%d", i),
			workflows.BackupRequest{Workload: fmt.Sprintf("burst%d", i), Repository: "main", Consistency: "app"})
		scheduled := map[int64]*historypb.HistoryEvent{}
		var worst time.Duration
		var worstName string
		for _, e := range h.Events {
			if e.GetActivityTaskScheduledEventAttributes() != nil {
				scheduled[e.GetEventId()] = e
			}
			a := e.GetActivityTaskStartedEventAttributes()
			if a == nil {
				continue
			}
			s := scheduled[a.GetScheduledEventId()]
			name := s.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName()
			if d := e.GetEventTime().AsTime().Sub(s.GetEventTime().AsTime()); d > worst {
				worst, worstName = d, name
			}
			switch name {
			case "Freeze", "Checkpoint", "Thaw", "FinishCheckpoint":
			default:
				continue
			}
			if d := e.GetEventTime().AsTime().Sub(s.GetEventTime().AsTime()); d > time.Second {
				t.Errorf("backup %d: %s (%s) started %v after it was scheduled", i, name,
					s.GetActivityTaskScheduledEventAttributes().GetTaskQueue().GetName(), d.Round(time.Millisecond))
			}
		}
		t.Logf("backup %d of 20 VMs in %v; longest wait for a poller %v (%s)", i, time.Since(start).Round(time.Millisecond), worst.Round(time.Millisecond), worstName)
	}
}
