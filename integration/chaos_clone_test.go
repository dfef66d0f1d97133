package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/testenv/chaos"
	"github.com/raksha-backup/raksha/workflows"
)

// TestChaosTemporalServerKilledDuringCloneHooks: a staging clone of demo-1
// (its restore into project staging, a post-restore hook of a few seconds
// that masks the data, and a health check) runs on a dev server on a
// database file; the server is SIGKILLed while the clone is in its
// post-restore hooks (a random moment in the hook) and started again 1-4 s
// later. The clone must complete with its hook and health check passed,
// soon after the restart, and its delete must leave nothing in either
// project; a clone that fails instead must have removed what it made.
func TestChaosTemporalServerKilledDuringCloneHooks(t *testing.T) {
	srv := startKillableServer(t)
	c, err := client.Dial(client.Options{HostPort: srv.addr(), Logger: quietSDKLog()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	e := &labEnv{labDemo: startLabDemo(t), temporal: c}
	startWorkers(t, c, e.acts, activities.ControlQueue, activities.HostQueue("h1"))
	ctx := e.ctx
	rng := chaos.NewRand(t)
	rounds := chaos.Rounds(t, 1)
	row := chaos.Row{Scenario: "Temporal server SIGKILLed during a clone's post-restore hook, restarted 1-4 s later",
		Components: "dev server (sqlite file), lab (QEMU + qemu-ga; clone into project staging), local repository", Rounds: rounds}
	b := e.backup()
	staging, err := e.admin.ForProject(ctx, "staging")
	if err != nil {
		t.Fatal(err)
	}
	var notes []string
	for round := range rounds {
		name := fmt.Sprintf("chaos%d", round+1)
		// The masking hook appends one line per run to MASKED, so the
		// health check (and the test) see how often it ran.
		req := workflows.CloneRequest{Name: name, RestoreRequest: workflows.RestoreRequest{Repository: "main", BackupID: b.BackupID,
			VMs: []string{"demo-1"}, Project: "staging", NamePrefix: name + "-", Networks: map[string]string{lab.Network: lab.Network2},
			PostHooks: []activities.Hook{{Name: "mask", Path: "/bin/sh", Args: []string{"-c",
				"sleep 4; for d in /data/*; do echo masked >> $d/MASKED; done; sync"}, Timeout: time.Minute}},
			HealthCheck: &activities.Hook{Name: "health", Path: "/bin/sh", Args: []string{"-c", "guestapp check /data/* && cat /data/*/MASKED"}},
			Operator:    true}} // the test is the operator: hooks are its to give
		wr, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.CloneWorkflowID(name), TaskQueue: activities.ControlQueue},
			workflows.Clone, req)
		if err != nil {
			t.Fatal(err)
		}
		waitRestorePhase(t, c, wr, "post-restore hooks")
		time.Sleep(chaos.Jitter(rng, 0, 3*time.Second))
		down, restarted := srv.bounce(chaos.Jitter(rng, time.Second, 4*time.Second))
		var res workflows.RestoreResult
		gctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		err = c.GetWorkflow(gctx, wr.GetID(), wr.GetRunID()).Get(gctx, &res)
		cancel()
		took := time.Since(restarted)
		row.Recover = max(row.Recover, took)
		t.Logf("round %d: server down %v in the clone's hooks; clone done %v after the restart: %v", round, down.Round(time.Millisecond), took.Round(time.Millisecond), err)
		row.GuestsLeftFrozen += e.frozenGuests(t)
		if err != nil {
			// Failing cleanly: the clone removed what it made.
			if s, v, ferr := staging.FindByMetadata(ctx, activities.MetaClone, name); ferr != nil || len(s)+len(v) != 0 {
				row.Orphans += len(s) + len(v)
				t.Errorf("round %d: the failed clone left servers %v volumes %v (%v)", round, s, v, ferr)
			}
			row.FailedCleanly++
			notes = append(notes, fmt.Sprintf("%.1fs down: failed cleanly (%v)", down.Seconds(), err))
			continue
		}
		if len(res.Servers) != 1 || len(res.Hooks) != 2 || res.Hooks[0].ExitCode != 0 || res.Hooks[1].ExitCode != 0 {
			t.Errorf("round %d: clone result %+v", round, res)
		}
		masked := 0
		if len(res.Hooks) == 2 {
			masked = strings.Count(res.Hooks[1].Output, "masked")
		}
		if masked == 0 {
			t.Errorf("round %d: the health check did not find the masking hook's work: %+v", round, res.Hooks)
		}
		if took > time.Minute {
			t.Errorf("round %d: the clone finished %v after the server was back: recovery must take seconds", round, took.Round(time.Second))
		}
		// The clone is a working copy: every record intact in its guest.
		out := e.guestCheck(res.Servers[0].Instance)
		if !strings.Contains(out, "OK /data/ephemeral0/") {
			t.Errorf("round %d: the clone's in-guest check:\n%s", round, out)
		}
		dw, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "clone-delete/" + name, TaskQueue: activities.ControlQueue},
			workflows.CloneDelete, workflows.CloneDeleteRequest{Name: name, Project: "staging"})
		if err != nil {
			t.Fatal(err)
		}
		var del workflows.CloneDeleteResult
		if err := dw.Get(ctx, &del); err != nil {
			t.Fatalf("round %d: clone delete: %v", round, err)
		}
		if s, v, err := staging.FindByMetadata(ctx, activities.MetaClone, name); err != nil || len(s)+len(v) != 0 {
			row.Orphans += len(s) + len(v)
			t.Errorf("round %d: after the clone's delete: servers %v volumes %v (%v)", round, s, v, err)
		}
		row.Completed++
		notes = append(notes, fmt.Sprintf("%.1fs down → clone done %.1fs after the restart, the masking hook ran %d time(s) (its disks: %d)", down.Seconds(), took.Seconds(), masked/max(1, len(res.Disks)), len(res.Disks)))
	}
	// The original runs on, untouched.
	if s := e.serverByName("demo-1"); s.Status != "ACTIVE" {
		t.Errorf("the original demo-1 is %s", s.Status)
	}
	e.guestCheck(e.serverByName("demo-1").InstanceRef.Name)
	row.Notes = strings.Join(notes, "; ")
	chaos.Record(t, row)
}

// waitRestorePhase waits (at most 10 minutes: the clone's guest waits for a guest slot) until a restore or clone
// reports phase in its progress query.
func waitRestorePhase(t *testing.T, c client.Client, wr client.WorkflowRun, phase string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Minute)
	last := ""
	for {
		v, err := c.QueryWorkflow(context.Background(), wr.GetID(), wr.GetRunID(), workflows.ProgressQuery)
		var p workflows.RestoreProgress
		if err == nil && v.Get(&p) == nil {
			if p.Phase == phase {
				return
			}
			last = p.Phase
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never reached phase %q (last %q)", wr.GetID(), phase, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
