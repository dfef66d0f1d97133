package integration

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/policies"
	"github.com/raksha-backup/raksha/workflows"
)

// TestPolicyScheduleRunsRealBackup is a policy's schedule end to end on
// libvirt compute hosts: the demo example policy, applied as a Temporal
// Schedule on a real dev server, is triggered (paused, so it runs exactly
// once); the WorkloadBackup it starts freezes and backs up the lab's two
// guests, libvirt domains reached by the host worker through libvirtd
// (their root, ephemeral and volume disks through libvirt checkpoints);
// the backup lands in the repository with the policy's labels and expiry;
// the schedule is deleted.
func TestPolicyScheduleRunsRealBackup(t *testing.T) {
	begin := time.Now()
	d := startLabDemoWith(t, labEnvOptions{Libvirt: true})
	c, _ := startTemporal(t)
	ctx := context.Background()
	startWorkers(t, c, d.acts, activities.ControlQueue, activities.HostQueue("h1"))
	sc := c.ScheduleClient()

	p := loadDemoPolicy(t)
	paused := true
	p.Paused = &paused                             // nothing but the trigger starts a run
	p.Consistency.FreezeTimeout = 20 * time.Second // guests under TCG, as in the other lab tests
	if res, err := policies.Apply(ctx, sc, p); err != nil || res.Action != policies.Created {
		t.Fatalf("apply: %+v, %v", res, err)
	}
	t.Cleanup(func() { policies.Delete(context.Background(), sc, p.Name) })
	if err := policies.Trigger(ctx, sc, p.Name); err != nil {
		t.Fatal(err)
	}
	triggered := time.Now()
	var run policies.Run
	eventually(t, 20*time.Second, "the triggered schedule started no backup", func() bool {
		st, err := policies.Show(ctx, sc, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range st.Recent {
			if r.WorkflowID != "" {
				run = r
				return true
			}
		}
		return false
	})
	var res workflows.BackupResult
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := c.GetWorkflow(wctx, run.WorkflowID, run.RunID).Get(wctx, &res); err != nil {
		t.Fatalf("the scheduled backup %s failed: %v", run.WorkflowID, err)
	}
	t.Logf("scheduled backup %s (workflow %s) done %v after the trigger: %d VMs, %d disks, read %d MiB, new %d MiB; freeze windows %v",
		res.BackupID, run.WorkflowID, time.Since(triggered).Round(time.Millisecond), res.VMs, len(res.Disks),
		res.BytesRead>>20, res.BytesNew>>20, res.FreezeWindows)
	if res.Consistency != "app" || res.VMs != 2 || len(res.Disks) != 6 || len(res.FreezeWindows) != 2 {
		t.Errorf("result %+v", res)
	}
	for _, vm := range []string{"demo-1", "demo-2"} {
		for _, disk := range []string{"root", "disk0", "vol-"} {
			diskOf(t, &res, vm, disk)
		}
	}

	r := mustRepo(t, d.be)
	b, err := r.LoadBackup(ctx, res.BackupID)
	if err != nil {
		t.Fatalf("the scheduled backup is not in the repository: %v", err)
	}
	for _, disk := range res.Disks {
		m, err := r.LoadManifest(ctx, disk.Manifest)
		if err != nil {
			t.Fatal(err)
		}
		if m.Checkpoint == nil || m.Checkpoint.Kind != libvirt.CheckpointKind {
			t.Errorf("disk %s: checkpoint %+v; want a libvirt checkpoint", disk.Manifest, m.Checkpoint)
		}
	}
	// The project label is the project's id, as discovery captured it,
	// though the policy names the project by its name.
	dc, err := d.admin.ForProject(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"policy": "demo-daily", "workload": "demo", "project": dc.ProjectID()} {
		if b.Labels[k] != want {
			t.Errorf("record label %s = %q, want %q (labels %v)", k, b.Labels[k], want, b.Labels)
		}
	}
	if len(b.FreezeWindows) != 2 || b.FreezeWindows["demo-1"] != res.FreezeWindows["demo-1"] {
		t.Errorf("record's freeze windows %v, the workflow's %v", b.FreezeWindows, res.FreezeWindows)
	}
	if b.Consistency != "app" || len(b.Disks) != 6 || b.Expires == nil || b.Expires.Sub(b.Created) < 399*24*time.Hour {
		t.Errorf("record: consistency %q, %d disks, expires %v (created %v)", b.Consistency, len(b.Disks), b.Expires, b.Created)
	}
	if list, err := r.ListBackups(ctx, repo.Filter{Labels: map[string]string{"policy": "demo-daily"}}); err != nil || len(list) != 1 {
		t.Errorf("backups labelled policy=demo-daily: %d (%v), want 1", len(list), err)
	}
	desc, err := c.DescribeWorkflow(ctx, run.WorkflowID, run.RunID)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := desc.TypedSearchAttributes.GetKeyword(workflows.SAPolicy); got != "demo-daily" {
		t.Errorf("search attribute RakshaPolicy %q", got)
	}
	d.assertThawed(t)

	if err := policies.Delete(ctx, sc, p.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := policies.Show(ctx, sc, p.Name); !errors.Is(err, policies.ErrNotFound) {
		t.Fatalf("schedule after delete: %v", err)
	}
	if _, err := c.DescribeWorkflowExecution(ctx, run.WorkflowID, run.RunID); err != nil {
		t.Errorf("the backup's workflow after the schedule's delete: %v", err)
	}
	t.Logf("whole test %v", time.Since(begin).Round(time.Millisecond))
}

// TestLabBackupInChildWorkflows runs the copies of the lab's demo workload
// (2 real QEMU guests, 4 disks) in CopyDisks children, as a large workload
// would (threshold 1, 2 disks a child): a full and an incremental backup,
// the incremental reading only changed chunks, every restored disk's file
// system clean and its records intact.
func TestLabBackupInChildWorkflows(t *testing.T) {
	begin := time.Now()
	d := startLabDemo(t)
	c, _ := startTemporal(t)
	ctx := context.Background()
	startWorkers(t, c, d.acts, activities.ControlQueue, activities.HostQueue("h1"))
	req := workflows.BackupRequest{Workload: "demo", Project: "demo", Repository: "main", Consistency: "app",
		Selector: cloud.Selector{Workload: "demo"}, FreezeTimeout: 20 * time.Second, ChildCopyThreshold: 1, CopyBatchSize: 2}
	run := func() *workflows.BackupResult {
		t.Helper()
		start := time.Now()
		wr, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.BackupWorkflowID("", "demo"),
			TaskQueue: activities.ControlQueue}, workflows.WorkloadBackup, req)
		if err != nil {
			t.Fatal(err)
		}
		var res workflows.BackupResult
		if err := wr.Get(ctx, &res); err != nil {
			t.Fatal(err)
		}
		children := 0
		for _, ev := range history(t, c, wr.GetID(), wr.GetRunID()).Events {
			if ev.GetChildWorkflowExecutionCompletedEventAttributes() != nil {
				children++
			}
		}
		t.Logf("backup %s in %v through %d child workflows: read %d MiB, new %d MiB, reused %d MiB; freeze windows %v",
			res.BackupID, time.Since(start).Round(time.Millisecond), children, res.BytesRead>>20, res.BytesNew>>20, res.BytesReused>>20, res.FreezeWindows)
		if children != 2 || len(res.Disks) != 4 || res.Consistency != "app" {
			t.Fatalf("%d children (want 2), result %+v", children, res)
		}
		return &res
	}
	run()
	time.Sleep(2 * time.Second) // the writers go on
	second := run()
	var size int64
	for _, disk := range second.Disks {
		if !disk.Incremental {
			t.Errorf("disk %s of the second backup was read in full", disk.Manifest)
		}
		size += disk.Size
	}
	if second.BytesRead*20 > size {
		t.Errorf("the incremental read %d of %d bytes: more than 5%%", second.BytesRead, size)
	}
	d.assertThawed(t)
	r := mustRepo(t, d.be)
	for _, disk := range second.Disks {
		restoreAndCheck(ctx, t, r, disk.Manifest, disk.Size, filepath.Join(d.dir, "restored.raw"))
	}
	t.Logf("whole test %v", time.Since(begin).Round(time.Millisecond))
}
