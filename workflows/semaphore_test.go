package workflows

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/raksha-backup/raksha/activities"
)

const testSem = "test-semaphore"

// semFixture runs the Semaphore workflow in the SDK's test environment and
// records the grants it signals.
type semFixture struct {
	t      *testing.T
	env    *testsuite.TestWorkflowEnvironment
	mu     sync.Mutex
	grants []string // "WORKFLOW/KEY"
	// failGrant makes the grant signal to a workflow fail (run gone).
	failGrant map[string]bool
	// closed is what ClosedRuns reports.
	closed []activities.WorkflowRun
}

// newSemFixture: each grant signal takes grantDelay to be delivered.
func newSemFixture(t *testing.T, grantDelay time.Duration) *semFixture {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.SetStartWorkflowOptions(client.StartWorkflowOptions{ID: testSem})
	acts := activities.New(activities.Config{})
	env.RegisterActivity(acts)
	f := &semFixture{t: t, env: env, failGrant: map[string]bool{}}
	env.OnSignalExternalWorkflow(mock.Anything, mock.Anything, mock.Anything, activities.PermitGrantedSignal(testSem), mock.Anything).Return(
		func(_, workflowID, _, _ string, arg any) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.failGrant[workflowID] {
				return errors.New("unknown external workflow execution")
			}
			g := arg.(activities.PermitGrant)
			f.grants = append(f.grants, workflowID+"/"+g.Key)
			return nil
		}).After(grantDelay)
	env.OnActivity(acts.ClosedRuns, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.ClosedRunsInput) (*activities.ClosedRunsResult, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		res := &activities.ClosedRunsResult{}
		for _, r := range in.Runs {
			for _, c := range f.closed {
				if r == c {
					res.Closed = append(res.Closed, r)
				}
			}
		}
		return res, nil
	})
	return f
}

func (f *semFixture) at(d time.Duration, fn func()) { f.env.RegisterDelayedCallback(fn, d) }

func (f *semFixture) acquire(wf string, keys ...string) {
	f.env.SignalWorkflow(activities.SemaphoreAcquireSignal, activities.SemaphoreRequest{Semaphore: testSem, WorkflowID: wf, RunID: "run-" + wf, Keys: keys})
}

// acquireIn is acquire for a run that counts toward group's share.
func (f *semFixture) acquireIn(wf, group string, keys ...string) {
	f.env.SignalWorkflow(activities.SemaphoreAcquireSignal, activities.SemaphoreRequest{Semaphore: testSem, WorkflowID: wf, RunID: "run-" + wf, Keys: keys, Group: group})
}

func (f *semFixture) release(wf string, keys ...string) {
	f.env.SignalWorkflow(activities.SemaphoreReleaseSignal, activities.SemaphoreRelease{WorkflowID: wf, RunID: "run-" + wf, Keys: keys})
}

func (f *semFixture) state() SemaphoreState {
	f.t.Helper()
	v, err := f.env.QueryWorkflow(SemaphoreStateQuery)
	if err != nil {
		f.t.Fatalf("query: %v", err)
	}
	var st SemaphoreState
	if err := v.Get(&st); err != nil {
		f.t.Fatal(err)
	}
	return st
}

func permitNames(ps []Permit) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, p.WorkflowID+"/"+p.Key)
	}
	return out
}

func (f *semFixture) expect(when string, holders, waiting, grants []string) {
	f.t.Helper()
	st := f.state()
	f.mu.Lock()
	got := append([]string{}, f.grants...)
	f.mu.Unlock()
	// The grant signals of one workflow task are delivered by the test
	// environment in no set order (each mock runs on its own goroutine), so
	// the grants are compared as a set; the order the semaphore granted in is
	// what holders shows.
	sort.Strings(got)
	grants = append([]string{}, grants...)
	sort.Strings(grants)
	if !reflect.DeepEqual(permitNames(st.Holders), holders) || !reflect.DeepEqual(permitNames(st.Waiting), waiting) || !reflect.DeepEqual(got, grants) {
		f.t.Errorf("%s: holders %v waiting %v grants %v; want holders %v waiting %v grants %v",
			when, permitNames(st.Holders), permitNames(st.Waiting), got, holders, waiting, grants)
	}
}

func (f *semFixture) run(st SemaphoreState, end time.Duration) error {
	f.at(end, func() { f.env.CancelWorkflow() })
	f.env.ExecuteWorkflow(Semaphore, st)
	if !f.env.IsWorkflowCompleted() {
		f.t.Fatal("semaphore did not end")
	}
	return f.env.GetWorkflowError()
}

func TestSemaphoreGrantsQueuesFairlyAndResizes(t *testing.T) {
	f := newSemFixture(t, 0)
	f.at(time.Second, func() {
		f.acquire("A", "k1", "k2", "k3")
		f.acquire("B", "k1")
	})
	f.at(2*time.Second, func() {
		f.expect("after the requests", []string{"A/k1", "A/k2"}, []string{"A/k3", "B/k1"}, []string{"A/k1", "A/k2"})
		f.release("A", "k1")
	})
	// B holds no permit and A one: B's request goes first, though A's came
	// first.
	f.at(3*time.Second, func() {
		f.expect("after A's release", []string{"A/k2", "B/k1"}, []string{"A/k3"}, []string{"A/k1", "A/k2", "B/k1"})
		f.acquire("C", "k1")
		f.release("B", "k1")
	})
	f.at(4*time.Second, func() {
		f.expect("after B's release", []string{"A/k2", "C/k1"}, []string{"A/k3"}, []string{"A/k1", "A/k2", "B/k1", "C/k1"})
		f.release("A", "k2")
	})
	f.at(5*time.Second, func() {
		f.expect("after A's second release", []string{"C/k1", "A/k3"}, []string{}, []string{"A/k1", "A/k2", "B/k1", "C/k1", "A/k3"})
		f.acquire("C", "k1") // a repeated request (an activity retry): ignored
		f.acquire("D", "k1")
	})
	f.at(6*time.Second, func() {
		f.expect("after a repeat", []string{"C/k1", "A/k3"}, []string{"D/k1"}, []string{"A/k1", "A/k2", "B/k1", "C/k1", "A/k3"})
		f.env.SignalWorkflow(activities.SemaphoreResizeSignal, 3)
	})
	f.at(7*time.Second, func() {
		f.expect("after the resize", []string{"C/k1", "A/k3", "D/k1"}, []string{}, []string{"A/k1", "A/k2", "B/k1", "C/k1", "A/k3", "D/k1"})
		f.release("D", "k1")
		f.release("C", "k1")
		f.release("A", "k3", "k4") // k4 unknown: ignored
	})
	f.at(8*time.Second, func() {
		st := f.state()
		if len(st.Holders) != 0 || len(st.Waiting) != 0 || st.Permits != 3 || st.Granted != 6 {
			t.Errorf("final state %+v", st)
		}
	})
	err := f.run(SemaphoreState{Permits: 2}, 10*time.Second)
	if !temporal.IsCanceledError(err) {
		t.Errorf("err %v, want cancelled", err)
	}
}

// TestSemaphoreSharesByGroup: the copy children of one backup (one group)
// count as one share. With a permit free, a small backup's request goes
// before a second child's that came first, since the children's backup
// holds one permit already (by run, the child would have gone first).
func TestSemaphoreSharesByGroup(t *testing.T) {
	f := newSemFixture(t, 0)
	f.at(time.Second, func() {
		f.acquireIn("big/copy/1", "big", "k1", "k2")
	})
	f.at(2*time.Second, func() {
		f.acquireIn("big/copy/2", "big", "k1")
		f.acquire("small", "k1")
	})
	f.at(3*time.Second, func() {
		f.expect("after the requests", []string{"big/copy/1/k1", "big/copy/1/k2"}, []string{"big/copy/2/k1", "small/k1"},
			[]string{"big/copy/1/k1", "big/copy/1/k2"})
		f.release("big/copy/1", "k1")
	})
	f.at(4*time.Second, func() {
		f.expect("after one release", []string{"big/copy/1/k2", "small/k1"}, []string{"big/copy/2/k1"},
			[]string{"big/copy/1/k1", "big/copy/1/k2", "small/k1"})
		if st := f.state(); st.Holders[0].Group != "big" || st.Waiting[0].Group != "big" || st.Holders[1].Group != "" {
			t.Errorf("groups not kept: %+v", st)
		}
		f.release("small", "k1")
	})
	f.at(5*time.Second, func() {
		f.expect("after the small backup's release", []string{"big/copy/1/k2", "big/copy/2/k1"}, []string{},
			[]string{"big/copy/1/k1", "big/copy/1/k2", "small/k1", "big/copy/2/k1"})
	})
	err := f.run(SemaphoreState{Permits: 2}, 10*time.Second)
	if !temporal.IsCanceledError(err) {
		t.Errorf("err %v, want cancelled", err)
	}
}

// A holder whose run ended without releasing loses its permit at the next
// check, and so does a waiter.
func TestSemaphoreFreesPermitsOfEndedRuns(t *testing.T) {
	f := newSemFixture(t, 0)
	f.at(time.Second, func() {
		f.acquire("A", "k")
		f.acquire("B", "k")
		f.acquire("C", "k")
	})
	f.at(2*time.Second, func() {
		f.expect("before A ends", []string{"A/k"}, []string{"B/k", "C/k"}, []string{"A/k"})
		f.mu.Lock()
		f.closed = []activities.WorkflowRun{{WorkflowID: "A", RunID: "run-A"}, {WorkflowID: "B", RunID: "run-B"}}
		f.mu.Unlock()
	})
	f.at(25*time.Second, func() {
		f.expect("after the check", []string{"C/k"}, []string{}, []string{"A/k", "C/k"})
	})
	err := f.run(SemaphoreState{Permits: 1, CheckInterval: 20 * time.Second}, 30*time.Second)
	if !temporal.IsCanceledError(err) {
		t.Errorf("err %v, want cancelled", err)
	}
}

// A grant that cannot be delivered frees the permit at once.
func TestSemaphoreGrantToAGoneRunFreesThePermit(t *testing.T) {
	f := newSemFixture(t, 0)
	f.failGrant["A"] = true
	f.at(time.Second, func() {
		f.acquire("A", "k1", "k2")
		f.acquire("B", "k")
	})
	f.at(2*time.Second, func() {
		f.expect("after the failed grant", []string{"B/k"}, []string{}, []string{"B/k"})
	})
	f.run(SemaphoreState{Permits: 1}, 5*time.Second)
}

// The semaphore continues as new when its history is long, with every
// holder and waiter; it grants nothing more meanwhile and waits for the
// grants under way to be delivered.
func TestSemaphoreContinuesAsNew(t *testing.T) {
	f := newSemFixture(t, 5*time.Second) // each grant takes 5s to deliver
	f.at(time.Second, func() { f.acquire("A", "k") })
	f.at(2*time.Second, func() { f.acquire("B", "k") })
	f.at(3*time.Second, func() {
		f.env.SetCurrentHistoryLength(150)
		f.acquire("C", "k")
	})
	f.env.ExecuteWorkflow(Semaphore, SemaphoreState{Permits: 2, MaxHistory: 100})
	var can *workflow.ContinueAsNewError
	if err := f.env.GetWorkflowError(); !errors.As(err, &can) {
		t.Fatalf("err %v, want continue-as-new", err)
	}
	var next SemaphoreState
	if err := converter.GetDefaultDataConverter().FromPayloads(can.Input, &next); err != nil {
		t.Fatal(err)
	}
	if got := permitNames(next.Holders); !reflect.DeepEqual(got, []string{"A/k", "B/k"}) {
		t.Errorf("holders carried over: %v", got)
	}
	if got := permitNames(next.Waiting); !reflect.DeepEqual(got, []string{"C/k"}) {
		t.Errorf("waiting carried over: %v", got)
	}
	if next.Permits != 2 || next.Runs != 1 || next.Granted != 2 || next.MaxHistory != 100 || next.CheckInterval != DefaultSemaphoreCheckInterval {
		t.Errorf("state carried over: %+v", next)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	sort.Strings(f.grants) // delivered in no set order
	if !reflect.DeepEqual(f.grants, []string{"A/k", "B/k"}) {
		t.Errorf("grants %v: want both delivered before continue-as-new", f.grants)
	}
}

func TestSemaphoreWorkflowTypeName(t *testing.T) {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(Semaphore)
	// AcquirePermits starts the semaphore by this name.
	if name := fmt.Sprint(activities.SemaphoreWorkflowType); name != "Semaphore" {
		t.Fatalf("type %q", name)
	}
	env.RegisterDelayedCallback(func() { env.CancelWorkflow() }, time.Second)
	env.ExecuteWorkflow(activities.SemaphoreWorkflowType, activities.SemaphoreStart{Permits: 2})
	if !env.IsWorkflowCompleted() || !temporal.IsCanceledError(env.GetWorkflowError()) {
		t.Errorf("semaphore by name: %v", env.GetWorkflowError())
	}
}

// semBackup is a WorkloadBackup fixture with a semaphore that grants only
// when the test says.
type semBackup struct {
	*fixture
	mu       sync.Mutex
	keys     []string
	released []string
}

func newSemBackup(t *testing.T) *semBackup {
	f := &semBackup{fixture: newFixture(t)}
	acts := activities.New(activities.Config{})
	f.env.OnActivity(acts.AcquirePermits, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.SemaphoreRequest) (*activities.AcquireResult, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if in.Semaphore == WorkloadLockID("", "shop") && in.Permits == 1 {
			f.rec.add("workload lock")
			return &activities.AcquireResult{Bypass: true}, nil // granted at once
		}
		if in.Semaphore != CopySemaphoreID || in.Permits != DefaultCopyPermits || in.Group != "" {
			t.Errorf("request %+v (a backup copying itself is a share of its own: no group)", in)
		}
		f.keys = append(f.keys, in.Keys...)
		f.rec.add("acquire")
		return &activities.AcquireResult{}, nil
	})
	f.env.OnSignalExternalWorkflow(mock.Anything, CopySemaphoreID, "", activities.SemaphoreReleaseSignal, mock.Anything).Return(
		func(_, _, _, _ string, arg any) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.released = append(f.released, arg.(activities.SemaphoreRelease).Keys...)
			f.rec.add("release")
			return nil
		})
	return f
}

func (f *semBackup) grant(i int) {
	f.mu.Lock()
	key := f.keys[i]
	f.mu.Unlock()
	f.env.SignalWorkflow(activities.PermitGrantedSignal(CopySemaphoreID), activities.PermitGrant{Semaphore: CopySemaphoreID, Key: key})
}

func (f *semBackup) releasedKeys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string{}, f.released...)
}

// A backup copies a disk only with a permit, and gives each back.
func TestBackupCopiesUnderPermits(t *testing.T) {
	f := newSemBackup(t)
	f.env.RegisterDelayedCallback(func() {
		if f.rec.count("copy") != 0 {
			t.Errorf("copied without a permit: %v", f.rec.calls)
		}
		f.grant(0)
	}, time.Minute)
	f.env.RegisterDelayedCallback(func() {
		if f.rec.count("copy db") != 1 || f.rec.count("copy web") != 0 {
			t.Errorf("with one permit granted: %v", f.rec.calls)
		}
		if got := f.releasedKeys(); len(got) != 1 || !strings.HasSuffix(got[0], "/db/vda") {
			t.Errorf("released %v, want db's permit", got)
		}
		f.grant(1)
		f.grant(1) // a repeated grant of a held permit changes nothing
	}, 2*time.Minute)
	f.env.ExecuteWorkflow(WorkloadBackup, appReq)
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var res BackupResult
	f.env.GetWorkflowResult(&res)
	if len(res.Disks) != 2 || res.BytesRead != 200 {
		t.Errorf("result %+v", res)
	}
	if len(f.keys) != 2 || !strings.HasSuffix(f.keys[0], "/db/vda") || !strings.HasSuffix(f.keys[1], "/web/vda") {
		t.Errorf("keys %v", f.keys)
	}
	if got := f.releasedKeys(); !reflect.DeepEqual(got, f.keys) {
		t.Errorf("released %v, want %v", got, f.keys)
	}
	f.before(t, "thaw instance-2", "acquire")
	f.before(t, "copy web", "commit app 2")
}

// After a failed copy no other copy starts; its permit goes back unused.
func TestBackupStartsNoCopyAfterAFailure(t *testing.T) {
	f := newSemBackup(t)
	f.copyDisk = func(_ context.Context, in activities.CopyInput) (*activities.CopyResult, error) {
		return nil, temporal.NewNonRetryableApplicationError("disk on fire", "Test", nil)
	}
	f.env.RegisterDelayedCallback(func() { f.grant(0) }, time.Minute)
	f.env.RegisterDelayedCallback(func() { f.grant(1) }, 2*time.Minute)
	f.env.ExecuteWorkflow(WorkloadBackup, appReq)
	err := f.env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "copy db/vda") || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("err %v, want db's copy failure", err)
	}
	if f.rec.count("copy web") != 0 {
		t.Errorf("a copy started after another failed: %v", f.rec.calls)
	}
	if got := f.releasedKeys(); !reflect.DeepEqual(got, f.keys) {
		t.Errorf("released %v, want %v", got, f.keys)
	}
	if f.rec.count("abort") != 1 || f.rec.count("commit") != 0 {
		t.Errorf("no cleanup: %v", f.rec.calls)
	}
}

// Cancelled while waiting for permits: the requests are withdrawn and the
// backup is cleaned up.
func TestBackupCancelledWaitingForPermits(t *testing.T) {
	f := newSemBackup(t)
	f.env.RegisterDelayedCallback(func() { f.env.CancelWorkflow() }, time.Minute)
	f.env.ExecuteWorkflow(WorkloadBackup, appReq)
	err := f.env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "canceled") {
		t.Fatalf("err %v, want cancelled", err)
	}
	if f.rec.count("copy") != 0 || f.rec.count("commit") != 0 || f.rec.count("abort") != 1 || f.rec.count("finish abort") != 2 {
		t.Errorf("calls %v", f.rec.calls)
	}
	if got := f.releasedKeys(); !reflect.DeepEqual(got, f.keys) {
		t.Errorf("released %v, want %v", got, f.keys)
	}
}
