package workflows

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/raksha-backup/raksha/activities"
)

// recorder keeps the order in which activities ran.
type recorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, s)
}

func (r *recorder) index(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Index(r.calls, s)
}

func (r *recorder) count(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

var twoVMs = activities.BeginResult{BackupID: "b1", VMs: []activities.VM{
	{ID: "1", Name: "db", Host: "h1", Instance: "instance-1", Disks: []activities.Disk{{Name: "vda", Locator: "qemu:h1/instance-1/vda", Size: 1 << 20}}},
	{ID: "2", Name: "web", Host: "h2", Instance: "instance-2", Disks: []activities.Disk{{Name: "vda", Locator: "qemu:h2/instance-2/vda", Size: 1 << 20}}},
}}

type fixture struct {
	env *testsuite.TestWorkflowEnvironment
	rec *recorder
	// overrides, set before ExecuteWorkflow
	freeze     func(context.Context, activities.FreezeInput) (*activities.FreezeResult, error)
	checkpoint func(context.Context, activities.CheckpointInput) (*activities.CheckpointResult, error)
	thaw       func(context.Context, activities.ThawInput) (*activities.ThawResult, error)
	copyDisk   func(context.Context, activities.CopyInput) (*activities.CopyResult, error)
	commit     func(context.Context, activities.CommitInput) (*activities.CommitResult, error)
	finish     func(context.Context, activities.FinishInput) error
	hooks      func(context.Context, activities.RunHooksInput) (*activities.RunHooksResult, error)
	freezeIns  []activities.FreezeInput
	// beginIn is what Begin was called with, pruneIn Prune.
	beginIn activities.BeginInput
	pruneIn activities.PruneInput
	// vms, if set, is the workload Begin discovers (default twoVMs).
	vms []activities.VM
}

// newFixture mocks every activity with a success; tests override some.
func newFixture(t *testing.T) *fixture {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	acts := activities.New(activities.Config{})
	env.RegisterActivity(acts)
	env.RegisterWorkflow(CopyDisks)
	checkRoleQueues(t, env)
	rec := &recorder{}
	f := &fixture{env: env, rec: rec}
	env.OnActivity(acts.Begin, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.BeginInput) (*activities.BeginResult, error) {
		rec.add("begin")
		f.beginIn = in
		r := twoVMs
		r.BackupID = in.BackupID
		r.ProjectID = "p-" + in.Project
		if f.vms != nil {
			r.VMs = f.vms
		}
		return &r, nil
	})
	env.OnActivity(acts.RunHooks, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.RunHooksInput) (*activities.RunHooksResult, error) {
		rec.add("hooks " + in.Phase + " " + in.Instance)
		if f.hooks != nil {
			return f.hooks(ctx, in)
		}
		return &activities.RunHooksResult{Ran: len(in.Hooks)}, nil
	})
	env.OnActivity(acts.Freeze, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.FreezeInput) (*activities.FreezeResult, error) {
		rec.add("freeze " + in.Instance)
		rec.mu.Lock()
		f.freezeIns = append(f.freezeIns, in)
		rec.mu.Unlock()
		if f.freeze != nil {
			return f.freeze(ctx, in)
		}
		return &activities.FreezeResult{}, nil
	})
	env.OnActivity(acts.Checkpoint, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.CheckpointInput) (*activities.CheckpointResult, error) {
		rec.add("checkpoint " + in.Instance)
		if f.checkpoint != nil {
			return f.checkpoint(ctx, in)
		}
		return &activities.CheckpointResult{Bitmap: "raksha-" + in.BackupID}, nil
	})
	env.OnActivity(acts.Thaw, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.ThawInput) (*activities.ThawResult, error) {
		rec.add("thaw " + in.Instance)
		if f.thaw != nil {
			return f.thaw(ctx, in)
		}
		return &activities.ThawResult{WasFrozen: true, Window: 150 * time.Millisecond}, nil
	})
	env.OnActivity(acts.CopyDisk, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.CopyInput) (*activities.CopyResult, error) {
		rec.add("copy " + in.VM)
		if f.copyDisk != nil {
			return f.copyDisk(ctx, in)
		}
		return &activities.CopyResult{Manifest: in.BackupID + "/" + in.VM + "/" + in.Disk.Name, BytesRead: 100, BytesNew: 10}, nil
	})
	env.OnActivity(acts.FinishCheckpoint, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.FinishInput) error {
		rec.add("finish " + in.Action + " " + in.Instance)
		if f.finish != nil {
			return f.finish(ctx, in)
		}
		return nil
	})
	env.OnActivity(acts.Commit, mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.CommitInput) (*activities.CommitResult, error) {
		rec.add("commit " + in.Consistency + " " + fmt.Sprint(len(in.Manifests)))
		if f.commit != nil {
			return f.commit(ctx, in)
		}
		return &activities.CommitResult{BackupID: in.BackupID, Disks: len(in.Manifests)}, nil
	})
	env.OnActivity(acts.Abort, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.AbortInput) error {
		rec.add("abort")
		return nil
	})
	env.OnActivity(acts.Prune, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PruneInput) (*activities.PruneResult, error) {
		rec.add("prune")
		f.pruneIn = in
		return &activities.PruneResult{Removed: []string{"old"}}, nil
	})
	return f
}

var appReq = BackupRequest{Workload: "shop", Repository: "main", Consistency: "app", Retention: activities.Retention{Daily: 7}}

func (f *fixture) before(t *testing.T, a, b string) {
	t.Helper()
	ia, ib := f.rec.index(a), f.rec.index(b)
	if ia < 0 || ib < 0 || ia > ib {
		t.Errorf("%q (at %d) should run before %q (at %d); calls: %v", a, ia, b, ib, f.rec.calls)
	}
}

func TestBackupSuccess(t *testing.T) {
	f := newFixture(t)
	f.env.ExecuteWorkflow(WorkloadBackup, appReq)
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var res BackupResult
	if err := f.env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	for _, vm := range []string{"instance-1", "instance-2"} {
		f.before(t, "freeze "+vm, "checkpoint instance-1")
		f.before(t, "freeze "+vm, "checkpoint instance-2")
		f.before(t, "checkpoint "+vm, "thaw instance-1")
		f.before(t, "checkpoint "+vm, "thaw instance-2")
		f.before(t, "thaw "+vm, "copy db")
		f.before(t, "thaw "+vm, "copy web")
		f.before(t, "finish cleanup "+vm, "commit app 2")
		f.before(t, "commit app 2", "finish release "+vm)
	}
	f.before(t, "commit app 2", "prune")
	if f.rec.count("abort") != 0 || f.rec.count("finish abort") != 0 {
		t.Errorf("a successful backup aborted something: %v", f.rec.calls)
	}
	if res.Consistency != "app" || len(res.Disks) != 2 || res.FreezeWindows["db"] != 150*time.Millisecond || res.BytesRead != 200 {
		t.Errorf("result %+v", res)
	}
	if len(res.Pruned) != 1 {
		t.Errorf("pruned %v", res.Pruned)
	}
}

// failAt makes one activity fail (non-retryable) and checks the cleanup.
func TestFailureAtEachStepThawsAndCommitsNothing(t *testing.T) {
	for _, step := range []string{"checkpoint", "copy", "commit"} {
		t.Run(step, func(t *testing.T) {
			f := newFixture(t)
			fail := temporal.NewNonRetryableApplicationError("boom at "+step, "Test", nil)
			switch step {
			case "checkpoint":
				f.checkpoint = func(context.Context, activities.CheckpointInput) (*activities.CheckpointResult, error) {
					return nil, fail
				}
			case "copy":
				f.copyDisk = func(context.Context, activities.CopyInput) (*activities.CopyResult, error) { return nil, fail }
			case "commit":
				f.commit = func(context.Context, activities.CommitInput) (*activities.CommitResult, error) { return nil, fail }
			}
			f.env.ExecuteWorkflow(WorkloadBackup, appReq)
			err := f.env.GetWorkflowError()
			if err == nil || !strings.Contains(err.Error(), "boom at "+step) {
				t.Fatalf("workflow error %v, want the %s failure", err, step)
			}
			if f.rec.count("thaw ") < 2 {
				t.Errorf("guests not thawed after a %s failure: %v", step, f.rec.calls)
			}
			if f.rec.count("abort") != 1 || f.rec.count("finish abort") != 2 {
				t.Errorf("no abort of the session and the checkpoints: %v", f.rec.calls)
			}
			if f.rec.count("finish release") != 0 || f.rec.count("prune") != 0 {
				t.Errorf("released or pruned after a failure: %v", f.rec.calls)
			}
		})
	}
}

func TestFreezeFailureThawsEveryGuest(t *testing.T) {
	f := newFixture(t)
	f.freeze = func(_ context.Context, in activities.FreezeInput) (*activities.FreezeResult, error) {
		if in.Instance == "instance-2" {
			return nil, temporal.NewNonRetryableApplicationError("agent refused", "Test", nil)
		}
		return &activities.FreezeResult{}, nil
	}
	f.env.ExecuteWorkflow(WorkloadBackup, appReq)
	if err := f.env.GetWorkflowError(); err == nil {
		t.Fatal("backup succeeded though a freeze failed")
	}
	if f.rec.index("thaw instance-1") < 0 || f.rec.index("thaw instance-2") < 0 {
		t.Errorf("not every guest was thawed: %v", f.rec.calls)
	}
	if f.rec.count("copy") != 0 || f.rec.count("checkpoint") != 0 {
		t.Errorf("copied or checkpointed after a failed freeze: %v", f.rec.calls)
	}
}

func TestGuardFiredFailsAppOrLabelsCrash(t *testing.T) {
	for _, mode := range []string{"fail", "crash"} {
		t.Run(mode, func(t *testing.T) {
			f := newFixture(t)
			f.thaw = func(_ context.Context, in activities.ThawInput) (*activities.ThawResult, error) {
				return &activities.ThawResult{WasFrozen: true, GuardThawed: in.Instance == "instance-1", Window: 10 * time.Second}, nil
			}
			req := appReq
			req.OnAppFailure = mode
			f.env.ExecuteWorkflow(WorkloadBackup, req)
			err := f.env.GetWorkflowError()
			if mode == "fail" {
				var ae *temporal.ApplicationError
				if !errors.As(err, &ae) || ae.Type() != ErrNotAppConsistent {
					t.Fatalf("err %v, want %s", err, ErrNotAppConsistent)
				}
				if f.rec.count("commit") != 0 || f.rec.count("abort") != 1 {
					t.Errorf("calls %v", f.rec.calls)
				}
				return
			}
			var res BackupResult
			if err != nil || f.env.GetWorkflowResult(&res) != nil || res.Consistency != "crash" || f.rec.index("commit crash 2") < 0 {
				t.Fatalf("err %v, result %+v, calls %v", err, res, f.rec.calls)
			}
		})
	}
}

// TestLostThawNamesTheVM: the VM whose host worker died holding its
// freeze is named in the error with why its thaw was lost, beside the VM
// whose guard fired (#15: the error named only the latter).
func TestLostThawNamesTheVM(t *testing.T) {
	f := newFixture(t)
	f.thaw = func(_ context.Context, in activities.ThawInput) (*activities.ThawResult, error) {
		if in.Instance == "instance-1" {
			return &activities.ThawResult{GuardThawed: true, Lost: "the host worker that froze it is gone"}, nil
		}
		return &activities.ThawResult{WasFrozen: true, GuardThawed: true, Window: 20 * time.Second}, nil
	}
	f.env.ExecuteWorkflow(WorkloadBackup, appReq)
	err := f.env.GetWorkflowError()
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != ErrNotAppConsistent {
		t.Fatalf("err %v, want %s", err, ErrNotAppConsistent)
	}
	want := "freeze deadline passed before thaw on [web]; thaw lost on db: the host worker that froze it is gone"
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("err %q, want it to say %q", err, want)
	}
}

func TestNoAgentFallsBackToCrashWhenAllowed(t *testing.T) {
	f := newFixture(t)
	f.freeze = func(context.Context, activities.FreezeInput) (*activities.FreezeResult, error) {
		return &activities.FreezeResult{NoAgent: true}, nil
	}
	req := appReq
	req.OnAppFailure = "crash"
	f.env.ExecuteWorkflow(WorkloadBackup, req)
	var res BackupResult
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	f.env.GetWorkflowResult(&res)
	if res.Consistency != "crash" || len(res.Warnings) != 2 {
		t.Errorf("result %+v", res)
	}
}

func TestCancelDuringCopyCleansUp(t *testing.T) {
	f := newFixture(t)
	f.copyDisk = func(ctx context.Context, in activities.CopyInput) (*activities.CopyResult, error) {
		f.env.CancelWorkflow()
		return nil, temporal.NewCanceledError()
	}
	f.env.ExecuteWorkflow(WorkloadBackup, appReq)
	err := f.env.GetWorkflowError()
	if err == nil || !temporal.IsCanceledError(errors.Unwrap(err)) && !strings.Contains(err.Error(), "canceled") {
		t.Fatalf("err %v, want cancelled", err)
	}
	if f.rec.count("abort") != 1 || f.rec.count("finish abort") != 2 || f.rec.count("commit") != 0 {
		t.Errorf("cancellation did not clean up: %v", f.rec.calls)
	}
}

func TestCancelDuringFreezeThaws(t *testing.T) {
	f := newFixture(t)
	f.checkpoint = func(ctx context.Context, in activities.CheckpointInput) (*activities.CheckpointResult, error) {
		f.env.CancelWorkflow()
		return nil, temporal.NewCanceledError()
	}
	f.env.ExecuteWorkflow(WorkloadBackup, appReq)
	if f.env.GetWorkflowError() == nil {
		t.Fatal("cancelled workflow succeeded")
	}
	if f.rec.index("thaw instance-1") < 0 || f.rec.index("thaw instance-2") < 0 {
		t.Errorf("cancelled during the freeze window and not thawed: %v", f.rec.calls)
	}
}

func TestInvalidRequest(t *testing.T) {
	f := newFixture(t)
	f.env.ExecuteWorkflow(WorkloadBackup, BackupRequest{Workload: "x", Repository: "r", Consistency: "maybe"})
	err := f.env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), `consistency "maybe"`) {
		t.Fatalf("err %v", err)
	}
	if f.rec.count("begin") != 0 {
		t.Error("an invalid request reached the cloud")
	}
}

func TestTransientCopyErrorIsRetried(t *testing.T) {
	f := newFixture(t)
	attempts := map[string]int{}
	var mu sync.Mutex
	f.copyDisk = func(_ context.Context, in activities.CopyInput) (*activities.CopyResult, error) {
		mu.Lock()
		attempts[in.VM]++
		n := attempts[in.VM]
		mu.Unlock()
		if n == 1 {
			return nil, errors.New("connection reset by peer") // retryable
		}
		return &activities.CopyResult{Manifest: in.BackupID + "/" + in.VM + "/" + in.Disk.Name}, nil
	}
	f.env.ExecuteWorkflow(WorkloadBackup, appReq)
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatalf("a transient copy error failed the backup: %v", err)
	}
	if attempts["db"] != 2 || attempts["web"] != 2 {
		t.Errorf("copy attempts %v, want 2 each", attempts)
	}
	if f.rec.count("abort") != 0 {
		t.Errorf("aborted after a retried error: %v", f.rec.calls)
	}
}

func TestExpiryReachesTheBackup(t *testing.T) {
	f := newFixture(t)
	req := appReq
	req.ExpireAfter = 30 * 24 * time.Hour
	start := f.env.Now()
	f.env.ExecuteWorkflow(WorkloadBackup, req)
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	got := f.beginIn.Expires
	if got == nil || got.Sub(start) < 30*24*time.Hour-time.Minute || got.Sub(start) > 30*24*time.Hour+time.Minute {
		t.Errorf("expiry %v, want 30 days after %v", got, start)
	}
}

// TestCheckpointsFinishOnAllVMsAtOnce: cleanup before the commit, release
// after it and abort after a failure each run on both VMs at once: each
// call waits until the other VM's has started, which one VM after another
// never does.
func TestCheckpointsFinishOnAllVMsAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name    string
		actions []string
		fail    bool
	}{{"success", []string{activities.FinishCleanup, activities.FinishRelease}, false}, {"failure", []string{activities.FinishAbort}, true}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			var mu sync.Mutex
			started := map[string]int{}
			f.finish = func(_ context.Context, in activities.FinishInput) error {
				mu.Lock()
				started[in.Action]++
				mu.Unlock()
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
					mu.Lock()
					n := started[in.Action]
					mu.Unlock()
					if n == 2 {
						return nil
					}
				}
				return temporal.NewNonRetryableApplicationError(in.Action+" of "+in.Instance+" ran alone", "Test", nil)
			}
			if tc.fail {
				f.commit = func(context.Context, activities.CommitInput) (*activities.CommitResult, error) {
					return nil, temporal.NewNonRetryableApplicationError("boom at commit", "Test", nil)
				}
			}
			f.env.ExecuteWorkflow(WorkloadBackup, appReq)
			err := f.env.GetWorkflowError()
			if tc.fail != (err != nil) {
				t.Fatalf("workflow error %v", err)
			}
			var res BackupResult
			if !tc.fail {
				if err := f.env.GetWorkflowResult(&res); err != nil {
					t.Fatal(err)
				}
				if len(res.Warnings) != 0 {
					t.Errorf("warnings %v", res.Warnings)
				}
			}
			for _, action := range tc.actions {
				if started[action] != 2 {
					t.Errorf("%s ran on %d VMs, want 2: %v", action, started[action], f.rec.calls)
				}
			}
		})
	}
}

// TestFailedCleanupOfOneVMFailsTheBackupAfterBoth: a cleanup failing on one
// VM fails the backup with that VM's name, after the other VM's cleanup ran
// too, and commits nothing.
func TestFailedCleanupOfOneVMFailsTheBackupAfterBoth(t *testing.T) {
	f := newFixture(t)
	f.finish = func(_ context.Context, in activities.FinishInput) error {
		if in.Action == activities.FinishCleanup && in.Instance == "instance-1" {
			return temporal.NewNonRetryableApplicationError("export busy", "Test", nil)
		}
		return nil
	}
	f.env.ExecuteWorkflow(WorkloadBackup, appReq)
	err := f.env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "finish checkpoint of db") || !strings.Contains(err.Error(), "export busy") {
		t.Fatalf("workflow error %v, want db's cleanup failure", err)
	}
	if f.rec.count("finish cleanup") != 2 || f.rec.count("commit") != 0 || f.rec.count("finish abort") != 2 || f.rec.count("abort") != 1 {
		t.Errorf("calls %v: want both cleanups, no commit, both checkpoints and the session aborted", f.rec.calls)
	}
}

// TestWorkloadWindowIsFirstFreezeToLastThaw: two guests frozen 300 ms apart,
// each frozen 1 s: the workload was frozen 1.3 s, not the largest single 1 s.
func TestWorkloadWindowIsFirstFreezeToLastThaw(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
	sent := map[string]time.Time{"a": t0, "b": t0.Add(300 * time.Millisecond)}
	windows := map[string]time.Duration{"a": time.Second, "b": time.Second}
	if got := workloadWindow(sent, windows); got != 1300*time.Millisecond {
		t.Errorf("workload window %v, want 1.3s", got)
	}
	// Without freeze times (older histories): the largest single window.
	if got := workloadWindow(nil, windows); got != time.Second {
		t.Errorf("without freeze times: %v, want 1s", got)
	}
}

var hookReq = func() BackupRequest {
	r := appReq
	r.PreHooks = []activities.Hook{{Path: "/usr/local/bin/db-quiesce", Timeout: 10 * time.Second}}
	r.PostHooks = []activities.Hook{{Path: "/usr/local/bin/db-resume"}}
	r.Operator = true
	return r
}()

// TestPreHooksRunOnEveryGuestBeforeAnyFreeze: a slow pre-hook on one guest
// must not lengthen another's freeze window, so every guest's pre-hooks run
// before the first freeze, and Freeze itself runs none.
func TestPreHooksRunOnEveryGuestBeforeAnyFreeze(t *testing.T) {
	f := newFixture(t)
	f.env.ExecuteWorkflow(WorkloadBackup, hookReq)
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	for _, pre := range []string{"hooks pre instance-1", "hooks pre instance-2"} {
		for _, fr := range []string{"freeze instance-1", "freeze instance-2"} {
			f.before(t, pre, fr)
		}
	}
	for _, in := range f.freezeIns {
		if len(in.PreHooks) != 0 || len(in.PostHooks) != 1 {
			t.Errorf("freeze of %s with pre-hooks %v and post-hooks %v; want none and the post-hook (run at thaw)", in.Instance, in.PreHooks, in.PostHooks)
		}
	}
	if n := f.rec.count("hooks post"); n != 0 {
		t.Errorf("%d post-hook runs outside the thaw; calls %v", n, f.rec.calls)
	}
}

// TestFailedPreHookFreezesNothingAndUndoes: a pre-hook fails on one guest:
// nothing is frozen, the other guest's post-hooks undo its pre-hooks, and
// the backup fails naming the guest.
func TestFailedPreHookFreezesNothingAndUndoes(t *testing.T) {
	f := newFixture(t)
	f.hooks = func(_ context.Context, in activities.RunHooksInput) (*activities.RunHooksResult, error) {
		if in.Phase == "pre" && in.Instance == "instance-2" {
			return nil, temporal.NewNonRetryableApplicationError("pre-hooks in instance-2: exit status 3", "HookFailed", nil)
		}
		return &activities.RunHooksResult{Ran: len(in.Hooks)}, nil
	}
	f.env.ExecuteWorkflow(WorkloadBackup, hookReq)
	err := f.env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "pre-hooks on web") {
		t.Fatalf("backup error %v, want the failed pre-hooks on web", err)
	}
	if n := f.rec.count("freeze"); n != 0 {
		t.Errorf("%d freezes after a failed pre-hook; calls %v", n, f.rec.calls)
	}
	if f.rec.index("hooks post instance-1") < 0 || f.rec.index("hooks post instance-2") >= 0 {
		t.Errorf("post-hooks should undo db's pre-hooks only; calls %v", f.rec.calls)
	}
	if f.rec.index("abort") < 0 {
		t.Errorf("the repository session was not aborted; calls %v", f.rec.calls)
	}
}

// TestSystemLabelsAndHooksRefused: a request whose labels set a system
// label, or that carries hooks without being the operator's, is refused
// before anything runs, naming the label or the hooks.
func TestSystemLabelsAndHooksRefused(t *testing.T) {
	for _, label := range []string{"workload", "project", "policy"} {
		f := newFixture(t)
		r := appReq
		r.Labels = map[string]string{"team": "a", label: "other"}
		f.env.ExecuteWorkflow(WorkloadBackup, r)
		err := f.env.GetWorkflowError()
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("label %q is a system label", label)) {
			t.Errorf("labels %v: %v, want refused naming %q", r.Labels, err, label)
		}
		if f.rec.count("begin")+f.rec.count("workload lock") != 0 {
			t.Errorf("labels %v: the refused request went on: %v", r.Labels, f.rec.calls)
		}
	}
	f := newFixture(t)
	r := hookReq
	r.Operator = false
	f.env.ExecuteWorkflow(WorkloadBackup, r)
	err := f.env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "not marked operator") {
		t.Errorf("hooks without operator: %v", err)
	}
	if f.rec.count("begin")+f.rec.count("hooks") != 0 {
		t.Errorf("a request with a tenant's hooks went on: %v", f.rec.calls)
	}
	// User labels that are not system labels reach the record.
	f = newFixture(t)
	r = appReq
	r.Labels = map[string]string{"team": "a"}
	f.env.ExecuteWorkflow(WorkloadBackup, r)
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if f.beginIn.Labels["team"] != "a" || f.beginIn.Labels["workload"] != "shop" {
		t.Errorf("labels %v", f.beginIn.Labels)
	}
}

// TestWorkloadKeyedByProject: the workload lock includes the id of the
// request's project, prune is keyed by the project discovery resolved, and
// the workflow id carries the project.
func TestWorkloadKeyedByProject(t *testing.T) {
	f := newFixture(t)
	var locks []string
	acts := activities.New(activities.Config{})
	f.env.OnActivity(acts.AcquirePermits, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.SemaphoreRequest) (*activities.AcquireResult, error) {
		locks = append(locks, in.Semaphore)
		return &activities.AcquireResult{Bypass: true}, nil
	})
	f.env.OnActivity(acts.ResolveProject, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.ResolveProjectInput) (string, error) {
		return "id-of-" + in.Project, nil
	})
	r := appReq
	r.Project = "tenant-a"
	f.env.ExecuteWorkflow(WorkloadBackup, r)
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(locks, "raksha-workload-lock/id-of-tenant-a/shop") || slices.Contains(locks, "raksha-workload-lock/shop") {
		t.Errorf("locks %v, want raksha-workload-lock/id-of-tenant-a/shop (the project's id)", locks)
	}
	if !f.pruneIn.ByProject || f.pruneIn.Project != "p-tenant-a" || f.pruneIn.Labels["workload"] != "shop" {
		t.Errorf("prune input %+v, want workload shop of the resolved project p-tenant-a", f.pruneIn)
	}
	if got := BackupWorkflowID("tenant-a", "shop"); got != "backup/tenant-a/shop" {
		t.Errorf("workflow id %s", got)
	}
	if got := BackupWorkflowID("", "shop"); got != "backup/shop" {
		t.Errorf("workflow id without a project %s", got)
	}
}
