package workflows

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/activities"
)

// bigWorkload is vms VMs with disks disks each, on two hosts.
func bigWorkload(vms, disks int) []activities.VM {
	var out []activities.VM
	for i := range vms {
		host := fmt.Sprintf("h%d", i%2+1)
		vm := activities.VM{ID: fmt.Sprint(i), Name: fmt.Sprintf("vm%02d", i), Host: host, Instance: fmt.Sprintf("instance-%d", i)}
		for j := range disks {
			vm.Disks = append(vm.Disks, activities.Disk{Name: fmt.Sprintf("vd%c", 'a'+j), Size: int64(j+1) << 30,
				Locator: activities.Locator(fmt.Sprintf("qemu:%s/instance-%d/drive%d", host, i, j))})
		}
		out = append(out, vm)
	}
	return out
}

// copiers records which workflow ran each copy, and on which queue.
type copiers struct {
	mu     sync.Mutex
	by     map[string]string // VM/DISK → workflow id
	queues map[string]string // VM/DISK → task queue
}

func (c *copiers) copy(ctx context.Context, in activities.CopyInput) (*activities.CopyResult, error) {
	info := activity.GetInfo(ctx)
	c.mu.Lock()
	if c.by == nil {
		c.by, c.queues = map[string]string{}, map[string]string{}
	}
	c.by[in.VM+"/"+in.Disk.Name] = info.WorkflowExecution.ID
	c.queues[in.VM+"/"+in.Disk.Name] = info.TaskQueue
	c.mu.Unlock()
	return &activities.CopyResult{Manifest: in.BackupID + "/" + in.VM + "/" + in.Disk.Name, Size: in.Disk.Size,
		BytesRead: in.Disk.Size / 4, BytesNew: in.Disk.Size / 8, BytesReused: in.Disk.Size / 8, BytesStored: in.Disk.Size / 16,
		Incremental: in.Disk.Base != ""}, nil
}

func runBig(t *testing.T, req BackupRequest, vms []activities.VM) (*fixture, *copiers, *BackupResult) {
	t.Helper()
	f := newFixture(t)
	f.vms = vms
	c := &copiers{}
	f.copyDisk = c.copy
	f.env.ExecuteWorkflow(WorkloadBackup, req)
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var res BackupResult
	if err := f.env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	return f, c, &res
}

// TestLargeWorkloadCopiesInChildWorkflows: 100 disks (10 VMs of 10) are
// copied by ceil(100/32) = 4 CopyDisks children, none by the backup itself;
// every disk exactly once, on its host's queue; the result is the flat
// path's, disk for disk and in the same order.
func TestLargeWorkloadCopiesInChildWorkflows(t *testing.T) {
	vms := bigWorkload(10, 10)
	f, c, res := runBig(t, appReq, vms)
	parent := f.rec.calls // for messages
	children := map[string]int{}
	for disk, wf := range c.by {
		if !strings.HasPrefix(wf, "default-test-workflow-id/copy/"+res.BackupID+"/") {
			t.Errorf("disk %s copied by workflow %q, not a copy child of the backup", disk, wf)
		}
		children[wf]++
	}
	if len(c.by) != 100 || len(children) != 4 {
		t.Fatalf("%d disks copied by %d workflows %v, want 100 by 4", len(c.by), len(children), children)
	}
	for i, want := range []int{32, 32, 32, 4} {
		id := CopyWorkflowID("default-test-workflow-id", res.BackupID, i+1)
		if children[id] != want {
			t.Errorf("child %s copied %d disks, want %d", id, children[id], want)
		}
	}
	for disk, q := range c.queues {
		vm := vms[int(disk[2]-'0')*10+int(disk[3]-'0')]
		if q != activities.HostQueue(vm.Host) {
			t.Errorf("disk %s copied on queue %s, want its host's %s", disk, q, activities.HostQueue(vm.Host))
		}
	}
	if f.rec.index("commit app 100") < 0 || f.rec.count("finish release") != 10 || f.rec.count("thaw") != 10 {
		t.Errorf("calls %v", parent)
	}

	flatReq := appReq
	flatReq.ChildCopyThreshold = -1
	_, fc, flat := runBig(t, flatReq, vms)
	for disk, wf := range fc.by {
		if wf != "default-test-workflow-id" {
			t.Fatalf("flat path: disk %s copied by %s", disk, wf)
		}
	}
	// The backup id comes from the workflow clock, which may tick to the
	// next second between the two runs: compare with the flat run's id.
	if res.BackupID != flat.BackupID {
		flatJSON, _ := json.Marshal(flat)
		if err := json.Unmarshal([]byte(strings.ReplaceAll(string(flatJSON), flat.BackupID, res.BackupID)), flat); err != nil {
			t.Fatal(err)
		}
	}
	if !reflect.DeepEqual(res, flat) {
		t.Errorf("children's result differs from the flat path's:\n%+v\n%+v", res, flat)
	}
	var total, reused int64
	for _, vm := range vms {
		for _, d := range vm.Disks {
			total += d.Size / 4
			reused += d.Size / 8
		}
	}
	if len(res.Disks) != 100 || res.Disks[0].Manifest != res.BackupID+"/vm00/vda" || res.Disks[99].Manifest != res.BackupID+"/vm09/vdj" ||
		res.BytesRead != total || res.BytesReused != reused {
		t.Errorf("result: %d disks, first %s, last %s, read %d (want %d), reused %d (want %d)", len(res.Disks), res.Disks[0].Manifest,
			res.Disks[99].Manifest, res.BytesRead, total, res.BytesReused, reused)
	}
}

// TestSmallWorkloadCopiesInline: at or under the threshold the copies stay
// in the backup's own workflow; the threshold and batch size are the
// request's.
func TestCopyThresholdAndBatchSize(t *testing.T) {
	_, c, _ := runBig(t, appReq, bigWorkload(4, 8)) // 32 disks: not above the default 32
	for disk, wf := range c.by {
		if wf != "default-test-workflow-id" {
			t.Fatalf("32 disks: %s copied by %s, want the backup itself", disk, wf)
		}
	}
	req := appReq
	req.ChildCopyThreshold, req.CopyBatchSize = 3, 2
	_, c, res := runBig(t, req, twoVMs.VMs[:1:1]) // 1 disk: not above 3
	if c.by["db/vda"] != "default-test-workflow-id" || len(res.Disks) != 1 {
		t.Fatalf("1 disk, threshold 3: copied by %v", c.by)
	}
	_, c, res = runBig(t, req, bigWorkload(1, 5)) // 5 disks in batches of 2
	children := map[string]bool{}
	for _, wf := range c.by {
		children[wf] = true
	}
	if len(children) != 3 || len(res.Disks) != 5 {
		t.Fatalf("5 disks in batches of 2: %d children (want 3), %d disks", len(children), len(res.Disks))
	}
}

// TestBatchesKeepEveryDiskOnce: the batches cover every disk once, in
// order, a VM split across two batches carrying all its disks in both.
func TestBatchesKeepEveryDiskOnce(t *testing.T) {
	vms := bigWorkload(3, 5)
	st := &runState{checkpointed: map[string]string{"instance-1": "raksha-b"}}
	bs := batches(appReq, "b", vms, st, 4)
	if len(bs) != 4 || bs[3].Batch != 4 || bs[3].Batches != 4 {
		t.Fatalf("15 disks in batches of 4: %d batches %+v", len(bs), bs)
	}
	var got []copyJob
	for _, b := range bs {
		js, err := b.jobs()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, js...)
	}
	want := backupJobs(appReq, "b", vms, st)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("batched jobs differ from the flat jobs:\n%+v\n%+v", got, want)
	}
	if bs[1].VMs[0].VM.Name != "vm00" || len(bs[1].VMs[0].VM.Disks) != 5 || !reflect.DeepEqual(bs[1].VMs[0].Copy, []string{"vde"}) {
		t.Errorf("batch 2 starts with %+v", bs[1].VMs[0])
	}
	bad := bs[0]
	bad.VMs = []BatchVM{{VM: vms[0], Copy: []string{"vdz"}}}
	if _, err := bad.jobs(); err == nil || !strings.Contains(err.Error(), "no disk vdz") {
		t.Errorf("batch naming a disk its VM lacks: %v", err)
	}
}

// TestChildCopyFailureFailsTheBackup: one copy in one child fails; the
// backup fails with it, thaws, aborts every checkpoint and the session,
// commits nothing.
func TestChildCopyFailureFailsTheBackup(t *testing.T) {
	f := newFixture(t)
	f.vms = bigWorkload(10, 10)
	// The other children, cancelled, may withdraw requests not yet
	// answered: those go to the semaphore as releases.
	f.env.OnSignalExternalWorkflow(mock.Anything, CopySemaphoreID, "", activities.SemaphoreReleaseSignal, mock.Anything).Return(nil).Maybe()
	c := &copiers{}
	f.copyDisk = func(ctx context.Context, in activities.CopyInput) (*activities.CopyResult, error) {
		if in.VM == "vm07" && in.Disk.Name == "vdc" {
			return nil, temporal.NewNonRetryableApplicationError("disk unreadable", "Test", nil)
		}
		return c.copy(ctx, in)
	}
	f.env.ExecuteWorkflow(WorkloadBackup, appReq)
	err := f.env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "disk unreadable") || !strings.Contains(err.Error(), "copy vm07/vdc") {
		t.Fatalf("err %v, want the failed copy of vm07/vdc", err)
	}
	if f.rec.count("commit") != 0 || f.rec.count("abort") != 1 || f.rec.count("finish abort") != 10 || f.rec.count("finish release") != 0 {
		t.Errorf("after a failed child copy: %v", f.rec.calls)
	}
}

// TestCancelDuringChildCopiesCleansUp: the backup is cancelled while its
// children copy: the children end, then the cleanup runs; nothing commits.
func TestCancelDuringChildCopiesCleansUp(t *testing.T) {
	f := newFixture(t)
	f.vms = bigWorkload(10, 10)
	// Requests withdrawn before the (bypassing) answer came go to the
	// semaphore as releases.
	f.env.OnSignalExternalWorkflow(mock.Anything, CopySemaphoreID, "", activities.SemaphoreReleaseSignal, mock.Anything).Return(nil).Maybe()
	var once sync.Once
	f.copyDisk = func(ctx context.Context, in activities.CopyInput) (*activities.CopyResult, error) {
		once.Do(f.env.CancelWorkflow)
		return nil, temporal.NewCanceledError()
	}
	f.env.ExecuteWorkflow(WorkloadBackup, appReq)
	err := f.env.GetWorkflowError()
	var ce *temporal.CanceledError
	if err == nil || !errors.As(err, &ce) && !strings.Contains(err.Error(), "canceled") {
		t.Fatalf("err %v, want cancelled", err)
	}
	if f.rec.count("commit") != 0 || f.rec.count("abort") != 1 || f.rec.count("finish abort") != 10 {
		t.Errorf("cancellation during child copies did not clean up: %v", f.rec.calls)
	}
	// That the abort comes after the last copy stopped is checked against a
	// real server (integration's TestCancelledBackupAbortsAfterItsLastCopy):
	// the SDK's test environment reports a cancelled activity at once and
	// may still start its function later, whatever WaitForCancellation says.
}

// TestTransientErrorInChildIsRetried: a retryable copy error in a child is
// retried there; the backup succeeds.
func TestTransientErrorInChildIsRetried(t *testing.T) {
	f := newFixture(t)
	f.vms = bigWorkload(5, 10)
	c := &copiers{}
	var mu sync.Mutex
	tries := 0
	f.copyDisk = func(ctx context.Context, in activities.CopyInput) (*activities.CopyResult, error) {
		if in.VM == "vm03" && in.Disk.Name == "vdb" {
			mu.Lock()
			tries++
			n := tries
			mu.Unlock()
			if n == 1 {
				return nil, errors.New("connection reset by peer")
			}
		}
		return c.copy(ctx, in)
	}
	f.env.ExecuteWorkflow(WorkloadBackup, appReq)
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if tries != 2 || len(c.by) != 50 || f.rec.count("abort") != 0 {
		t.Errorf("tries %d (want 2), copied %d (want 50), calls %v", tries, len(c.by), f.rec.calls)
	}
}
