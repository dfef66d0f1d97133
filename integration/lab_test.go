package integration

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
	"github.com/raksha-backup/raksha/workflows"
)

func mustRepo(t *testing.T, be *local.Backend) *repo.Repository {
	t.Helper()
	r, err := repo.Open(context.Background(), be, "secret", repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// TestAppConsistentBackupOfLabWorkload is the whole product on one machine:
// the lab cloud (OpenStack API) with the demo workload — two real QEMU
// guests, each with an ephemeral disk and a volume, running the in-guest
// writer — a real Temporal dev server, and a worker with the control and
// host roles. Two app-consistent backups (the second incremental); every
// restored disk's records are checked for tears, its file system with
// e2fsck; no guest is left frozen.
func TestAppConsistentBackupOfLabWorkload(t *testing.T) {
	e := newLabEnv(t)
	c, ctx, dir, be := e.temporal, e.ctx, e.dir, e.be
	req := workflows.BackupRequest{Workload: "demo", Project: "demo", Repository: "main", Consistency: "app",
		Selector: cloud.Selector{Workload: "demo"}, FreezeTimeout: 20 * time.Second}
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
		t.Logf("backup %s (%s) in %v: %d VMs, %d disks, read %d MiB, new %d MiB, stored %d MiB; freeze windows %v, workload %v",
			res.BackupID, res.Consistency, time.Since(start).Round(time.Millisecond), res.VMs, len(res.Disks),
			res.BytesRead>>20, res.BytesNew>>20, res.BytesStored>>20, res.FreezeWindows, res.WorkloadWindow)
		return &res
	}
	first := run()
	if first.Consistency != "app" || first.VMs != 2 || len(first.Disks) != 4 || len(first.FreezeWindows) != 2 {
		t.Fatalf("first backup: %+v", first)
	}
	time.Sleep(3 * time.Second) // the writers go on
	// The second backup has hooks: demo-1's pre-hook takes 3 s. Pre-hooks
	// run on every guest before the coordinated freeze, so that slow hook
	// must not show in the workload's freeze window (first freeze to last
	// thaw).
	req.PreHooks = []activities.Hook{{Path: "/bin/sh", Args: []string{"-c", "if [ -d /data/demo-1-data ]; then sleep 3; fi; echo pre > /tmp/raksha-pre-hook"}, Timeout: 20 * time.Second}}
	req.PostHooks = []activities.Hook{{Path: "/bin/sh", Args: []string{"-c", "echo post > /tmp/raksha-post-hook"}}}
	req.Operator = true // the test is the operator: hooks are its to give
	second := run()
	req.PreHooks, req.PostHooks = nil, nil
	if second.WorkloadWindow <= 0 || second.WorkloadWindow >= 3*time.Second {
		t.Errorf("workload freeze window %v with a 3 s pre-hook on demo-1: want it outside the window (> 0, < 3 s)", second.WorkloadWindow)
	}
	for _, s := range e.lab.Servers() {
		ag, err := e.agent(ctx, s.InstanceRef.Name)
		if err != nil {
			t.Fatal(err)
		}
		out, err := ag.Run(ctx, guest.ExecRequest{Path: "/bin/cat", Args: []string{"/tmp/raksha-pre-hook", "/tmp/raksha-post-hook"}, Capture: true})
		ag.Close()
		if err != nil || string(out.Stdout) != "pre\npost\n" {
			t.Errorf("guest %s: the hooks' marker files say %q (%v), want pre and post", s.Name, out.Stdout, err)
		}
	}
	var size int64
	for _, d := range second.Disks {
		if !d.Incremental {
			t.Errorf("disk %s of the second backup was read in full", d.Manifest)
		}
		size += d.Size
	}
	if second.BytesRead*20 > size {
		t.Errorf("the incremental read %d of %d bytes: more than 5%%", second.BytesRead, size)
	}

	// Cancel a third backup as soon as the guests are frozen.
	cancelled, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.BackupWorkflowID("", "demo"),
		TaskQueue: activities.ControlQueue}, workflows.WorkloadBackup, req)
	if err != nil {
		t.Fatal(err)
	}
	iter := c.GetWorkflowHistory(ctx, cancelled.GetID(), cancelled.GetRunID(), true, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	frozen := 0
	for frozen < 2 && iter.HasNext() {
		ev, err := iter.Next()
		if err != nil {
			t.Fatal(err)
		}
		if a := ev.GetActivityTaskCompletedEventAttributes(); a != nil {
			frozen++ // Begin, then the freezes
		}
	}
	if err := c.CancelWorkflow(ctx, cancelled.GetID(), cancelled.GetRunID()); err != nil {
		t.Fatal(err)
	}
	if err := cancelled.Get(ctx, nil); err == nil {
		t.Fatal("the cancelled backup succeeded")
	} else {
		t.Logf("backup cancelled in its freeze window: %v", err)
	}
	if list, err := mustRepo(t, be).ListBackups(ctx, repo.Filter{}); err != nil || len(list) != 2 {
		t.Errorf("after a cancelled backup: %d backups (%v), want the 2 committed ones", len(list), err)
	}

	// No guest is left frozen.
	e.assertThawed(t)

	// Every restored disk: file system clean, records intact up to the backup.
	r := mustRepo(t, be)
	for _, d := range second.Disks {
		st, files := restoreAndCheck(ctx, t, r, d.Manifest, d.Size, filepath.Join(dir, "restored.raw"))
		t.Logf("restored %s: %d MiB in %.1fs; %d record files intact", d.Manifest, st.BytesWritten>>20, st.Seconds, files)
	}
}
