package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/policies"
	"github.com/raksha-backup/raksha/workflows"
)

// stubBackup stands in for WorkloadBackup under the same workflow type
// name, so a schedule's runs need no cloud: it returns the request it got.
// A request of policy "slow" takes 4 seconds.
func stubBackup(ctx workflow.Context, req workflows.BackupRequest) (workflows.BackupRequest, error) {
	if req.Policy == "slow" {
		if err := workflow.Sleep(ctx, 4*time.Second); err != nil {
			return req, err
		}
	}
	return req, nil
}

func startStubWorker(t *testing.T, c client.Client) {
	t.Helper()
	w := worker.New(c, activities.ControlQueue, workerOptions())
	w.RegisterWorkflowWithOptions(stubBackup, workflow.RegisterOptions{Name: "WorkloadBackup"})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
}

// eventually polls cond every 200 ms until it holds or the time is up.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func loadDemoPolicy(t *testing.T) *policies.Policy {
	t.Helper()
	ps, err := policies.Load(filepath.Join(repoRoot(t), "policies", "examples", "demo-daily.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return ps[0]
}

// TestPolicyScheduleThroughTemporal applies the demo example policy, with
// its daily cron replaced by a 2-second interval, to a real Temporal dev
// server: the schedule starts WorkloadBackup with the policy's request and
// search attributes; apply is idempotent; pause stops it; trigger runs it
// once; an update keeps the pause unless the policy says; delete removes it.
func TestPolicyScheduleThroughTemporal(t *testing.T) {
	c, _ := startTemporal(t)
	ctx := context.Background()
	startStubWorker(t, c)
	sc := c.ScheduleClient()

	p := loadDemoPolicy(t)
	p.Schedule = policies.Schedule{Every: 2 * time.Second, CatchupWindow: 10 * time.Second}
	want := p.BackupRequest()

	for i, action := range []string{policies.Created, policies.Unchanged} {
		res, err := policies.Apply(ctx, sc, p)
		if err != nil {
			t.Fatal(err)
		}
		if res.Action != action || res.ScheduleID != "policy/demo-daily" {
			t.Fatalf("apply #%d: %+v, want %s", i+1, res, action)
		}
	}

	show := func() *policies.Status {
		t.Helper()
		st, err := policies.Show(ctx, sc, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	var first policies.Run
	eventually(t, 20*time.Second, "the schedule started no backup", func() bool {
		st := show()
		for _, r := range st.Recent {
			if r.WorkflowID != "" {
				first = r
				return true
			}
		}
		return false
	})
	// The server appends the scheduled time to the workflow id.
	if !strings.HasPrefix(first.WorkflowID, workflows.BackupWorkflowID(p.Selector.Project, "demo")+"-") {
		t.Errorf("workflow id %q, want backup/%s/demo-<time>", first.WorkflowID, p.Selector.Project)
	}
	var got workflows.BackupRequest
	if err := c.GetWorkflow(ctx, first.WorkflowID, first.RunID).Get(ctx, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the backup got\n%+v\nwant the policy's request\n%+v", got, want)
	}
	desc, err := c.DescribeWorkflow(ctx, first.WorkflowID, first.RunID)
	if err != nil {
		t.Fatal(err)
	}
	for _, sa := range []struct {
		key  temporal.SearchAttributeKeyKeyword
		want string
	}{{workflows.SAPolicy, "demo-daily"}, {workflows.SAWorkload, "demo"}, {workflows.SAProject, "demo"}, {workflows.SAOperation, "backup"}} {
		got, ok := desc.TypedSearchAttributes.GetKeyword(sa.key)
		if !ok || got != sa.want {
			t.Errorf("search attribute %s = %q (%v), want %q", sa.key.GetName(), got, ok, sa.want)
		}
	}
	if pl, ok := desc.Memo.GetFields()[policies.MemoPolicy]; !ok || !strings.Contains(string(pl.GetData()), "demo-daily") {
		t.Errorf("memo %v lacks the policy", desc.Memo.GetFields())
	}

	// Pause: no more runs.
	if err := policies.Pause(ctx, sc, p.Name, "maintenance"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // a run due at the pause may still start
	paused := show()
	if !paused.Paused || paused.Note != "maintenance" {
		t.Fatalf("after pause: %+v", paused)
	}
	time.Sleep(5 * time.Second)
	if st := show(); st.Actions != paused.Actions {
		t.Fatalf("paused schedule started %d backups", st.Actions-paused.Actions)
	}

	// Trigger: exactly one run, though paused.
	if err := policies.Trigger(ctx, sc, p.Name); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "trigger started no backup", func() bool { return show().Actions == paused.Actions+1 })
	time.Sleep(3 * time.Second)
	if st := show(); st.Actions != paused.Actions+1 || !st.Paused {
		t.Fatalf("after the trigger: %d runs (want %d), paused %v", st.Actions, paused.Actions+1, st.Paused)
	}

	// An update keeps the pause when the policy does not say; it sets it
	// when it does.
	p.Retention.Daily = 8
	if res, err := policies.Apply(ctx, sc, p); err != nil || res.Action != policies.Updated {
		t.Fatalf("apply a change: %+v, %v", res, err)
	}
	st := show()
	if st.Request == nil || st.Request.Retention.Daily != 8 || !st.Paused {
		t.Fatalf("after the update: %+v", st)
	}
	running := false
	p.Paused = &running
	if res, err := policies.Apply(ctx, sc, p); err != nil || res.Action != policies.Updated {
		t.Fatalf("apply paused: false: %+v, %v", res, err)
	}
	if st := show(); st.Paused {
		t.Fatalf("paused: false left the schedule paused: %+v", st)
	}
	if res, err := policies.Apply(ctx, sc, p); err != nil || res.Action != policies.Unchanged {
		t.Fatalf("apply again: %+v, %v", res, err)
	}

	eventually(t, 10*time.Second, "list does not show the policy", func() bool {
		list, err := policies.List(ctx, sc)
		if err != nil {
			t.Fatal(err)
		}
		return len(list) == 1 && list[0].Policy == "demo-daily" && list[0].Workload == "demo"
	})

	// Delete.
	if err := policies.Delete(ctx, sc, p.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := policies.Show(ctx, sc, p.Name); !errors.Is(err, policies.ErrNotFound) {
		t.Fatalf("show after delete: %v", err)
	}
	if err := policies.Delete(ctx, sc, p.Name); !errors.Is(err, policies.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

// TestPolicyRunsNeverOverlap: a backup that outlasts the interval makes
// the schedule skip runs instead of starting a second one.
func TestPolicyRunsNeverOverlap(t *testing.T) {
	c, _ := startTemporal(t)
	ctx := context.Background()
	startStubWorker(t, c)
	sc := c.ScheduleClient()
	p := loadDemoPolicy(t)
	p.Name = "slow"
	p.Schedule = policies.Schedule{Every: time.Second, CatchupWindow: 10 * time.Second}
	if _, err := policies.Apply(ctx, sc, p); err != nil {
		t.Fatal(err)
	}
	defer policies.Delete(ctx, sc, p.Name)
	var st *policies.Status
	eventually(t, 20*time.Second, "no run was skipped", func() bool {
		var err error
		if st, err = policies.Show(ctx, sc, p.Name); err != nil {
			t.Fatal(err)
		}
		if len(st.Running) > 1 {
			t.Fatalf("two backups of one workload at once: %v", st.Running)
		}
		return st.SkippedOverlap >= 2
	})
	t.Logf("started %d, skipped %d", st.Actions, st.SkippedOverlap)
}

// holdActivity stands for a disk copy: it counts how many run at once.
type holdActivity struct {
	mu       sync.Mutex
	cur, max int
	done     atomic.Int32
}

func (h *holdActivity) Hold(ctx context.Context, d time.Duration) error {
	h.mu.Lock()
	h.cur++
	h.max = max(h.max, h.cur)
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.cur--
		h.mu.Unlock()
		h.done.Add(1)
	}()
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// acquirer takes one permit of a semaphore, holds it for a while (an
// activity), and gives it back.
func acquirer(ctx workflow.Context, sem string, size int, key string, hold time.Duration) error {
	p := workflows.RequestPermits(ctx, sem, size, key)
	defer p.Close(ctx)
	if _, err := p.Next(ctx); err != nil {
		return err
	}
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Hour})
	return workflow.ExecuteActivity(actx, "Hold", hold).Get(ctx, nil)
}

func startSemaphoreWorker(t *testing.T, c client.Client) *holdActivity {
	t.Helper()
	acts := activities.New(activities.Config{Temporal: c, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	h := &holdActivity{}
	w := worker.New(c, activities.ControlQueue, workerOptions())
	w.RegisterWorkflow(workflows.Semaphore)
	w.RegisterWorkflow(acquirer)
	activities.RegisterRole(w, acts, activities.RoleControl)
	w.RegisterActivity(h)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return h
}

func semaphoreState(t *testing.T, c client.Client, id string) workflows.SemaphoreState {
	t.Helper()
	v, err := c.QueryWorkflow(context.Background(), id, "", workflows.SemaphoreStateQuery)
	if err != nil {
		t.Fatal(err)
	}
	var st workflows.SemaphoreState
	if err := v.Get(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestSemaphoreCapsConcurrentHolders: with 2 permits, five workflows that
// each hold one never hold more than 2 at once, and all finish.
func TestSemaphoreCapsConcurrentHolders(t *testing.T) {
	c, _ := startTemporal(t)
	ctx := context.Background()
	h := startSemaphoreWorker(t, c)
	const sem = "test-copy-semaphore"
	var runs []client.WorkflowRun
	for i := range 5 {
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: fmt.Sprintf("acquirer-%d", i), TaskQueue: activities.ControlQueue},
			acquirer, sem, 2, "disk", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, run)
	}
	start := time.Now()
	for _, r := range runs {
		if err := r.Get(ctx, nil); err != nil {
			t.Fatalf("%s: %v", r.GetID(), err)
		}
	}
	took := time.Since(start)
	h.mu.Lock()
	maxHeld := h.max
	h.mu.Unlock()
	if maxHeld != 2 || h.done.Load() != 5 {
		t.Errorf("at most %d held at once (want 2), %d done (want 5)", maxHeld, h.done.Load())
	}
	if took < 2*time.Second {
		t.Errorf("five 1-second holds with 2 permits took %v", took)
	}
	eventually(t, 5*time.Second, "permits left held", func() bool {
		st := semaphoreState(t, c, sem)
		return len(st.Holders) == 0 && len(st.Waiting) == 0 && st.Granted == 5 && st.Permits == 2
	})
	t.Logf("5 holders of 1 s through 2 permits in %v", took.Round(time.Millisecond))
}

// TestSemaphoreFreesPermitOfTerminatedHolder: a holder that is terminated
// (it never releases) loses its permit at the semaphore's next check.
func TestSemaphoreFreesPermitOfTerminatedHolder(t *testing.T) {
	c, _ := startTemporal(t)
	ctx := context.Background()
	startSemaphoreWorker(t, c)
	const sem = "test-leak-semaphore"
	if _, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: sem, TaskQueue: activities.ControlQueue},
		workflows.Semaphore, workflows.SemaphoreState{Permits: 1, CheckInterval: time.Second}); err != nil {
		t.Fatal(err)
	}
	a, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "holder-a", TaskQueue: activities.ControlQueue},
		acquirer, sem, 1, "disk", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "A got no permit", func() bool { return len(semaphoreState(t, c, sem).Holders) == 1 })
	if err := c.TerminateWorkflow(ctx, a.GetID(), a.GetRunID(), "test: a holder dies"); err != nil {
		t.Fatal(err)
	}
	b, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "holder-b", TaskQueue: activities.ControlQueue},
		acquirer, sem, 1, "disk", 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	bctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	start := time.Now()
	if err := b.Get(bctx, nil); err != nil {
		t.Fatalf("B never got the dead holder's permit: %v", err)
	}
	t.Logf("B got the permit %v after A was terminated", time.Since(start).Round(time.Millisecond))
	desc, err := c.DescribeWorkflowExecution(ctx, sem, "")
	if err != nil || desc.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		t.Fatalf("semaphore: %v, %v", desc.GetWorkflowExecutionInfo().GetStatus(), err)
	}
}
