package integration

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/policies"
	"github.com/raksha-backup/raksha/workflows"
)

// TestRestoreDrillOfLabWorkload: restore drills of the lab's demo workload
// on a real dev server with real QEMU guests. A drill policy's schedule
// (triggered) clones the newest backup into project staging, the two
// guests boot on their restored disks and run the health check (the
// in-guest record check): the drill passes, its record beside the backup
// says pass with the time to ready and each guest's output tail, the run
// carries RakshaDrill=pass and RakshaBackup, and nothing is left in
// staging. A second drill whose health check fails in demo-2 fails its
// workflow naming demo-2 and the check's output, after tearing the clone
// down; its record says fail, it is found by RakshaDrill="fail", and
// `raksha backup list --format json` shows the backup's last drill as fail.
func TestRestoreDrillOfLabWorkload(t *testing.T) {
	// The workers' client counts the drills (workflows.DrillMetric) as a
	// worker's metrics handler would export them.
	c, _ := startTemporal(t)
	drillCount := &drillCounter{counts: map[string]int64{}}
	wc, err := client.NewClientFromExisting(c, client.Options{MetricsHandler: drillCount})
	if err != nil {
		t.Fatal(err)
	}
	e := &labEnv{labDemo: startLabDemo(t), temporal: c}
	startWorkers(t, wc, e.acts, activities.ControlQueue, activities.HostQueue("h1"))
	ctx := e.ctx
	b := e.backup()
	t.Logf("backup %s: %d disks", b.BackupID, len(b.Disks))
	// The drills need only the backup. The originals go, so that the
	// clone's two guests find guest slots.
	for _, s := range e.lab.Servers() {
		if err := e.admin.DeleteServer(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 2*time.Minute, "the demo servers were not deleted", func() bool { return len(e.lab.Servers()) == 0 })
	r := mustRepo(t, e.be)
	before, err := r.LoadBackup(ctx, b.BackupID)
	if err != nil {
		t.Fatal(err)
	}
	staging, err := e.admin.ForProject(ctx, "staging")
	if err != nil {
		t.Fatal(err)
	}
	nothingLeft := func(what, clone string) {
		t.Helper()
		if s, v, err := staging.FindByMetadata(ctx, activities.MetaClone, clone); err != nil || len(s)+len(v) != 0 {
			t.Errorf("%s: clone %s left servers %v volumes %v in staging (%v)", what, clone, s, v, err)
		}
		if n := len(e.lab.Servers()); n != 0 {
			t.Errorf("%s: %d servers left in the lab", what, n)
		}
	}

	// 1. A passing drill, started by its policy's schedule.
	ps, err := policies.Parse("drill.yaml", []byte(`kind: drill
name: demo-drill
workload: demo
project: demo
repository: main
paused: true
schedule:
  every: 24h
drill:
  project: staging
  networks:
    lab-net: lab-net-2
  health_check:
    name: records
    path: /bin/sh
    args: ["-c", "guestapp check /data/*"]
    timeout: 2m
  timeout: 30m
`))
	if err != nil {
		t.Fatal(err)
	}
	sc := c.ScheduleClient()
	if res, err := policies.Apply(ctx, sc, ps[0]); err != nil || res.Action != policies.Created {
		t.Fatalf("apply: %+v, %v", res, err)
	}
	t.Cleanup(func() { policies.Delete(context.Background(), sc, ps[0].Name) })
	start := time.Now()
	if err := policies.Trigger(ctx, sc, ps[0].Name); err != nil {
		t.Fatal(err)
	}
	var run policies.Run
	eventually(t, 30*time.Second, "the triggered drill policy started no run", func() bool {
		st, err := policies.Show(ctx, sc, ps[0].Name)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Recent) == 1 && st.Recent[0].WorkflowID != "" {
			run = st.Recent[0]
			if st.Drill == nil || st.Workload != "demo" || st.Drill.DrillProject != "staging" || st.Drill.HealthCheck == nil {
				t.Errorf("policy show of the drill policy: workload %q, drill %+v", st.Workload, st.Drill)
			}
			return true
		}
		return false
	})
	if !strings.HasPrefix(run.WorkflowID, workflows.DrillWorkflowID("demo")) {
		t.Errorf("drill run id %q, want %s-<time>", run.WorkflowID, workflows.DrillWorkflowID("demo"))
	}
	var pass repo.Drill
	if err := c.GetWorkflow(ctx, run.WorkflowID, "").Get(ctx, &pass); err != nil {
		t.Fatalf("the passing drill: %v", err)
	}
	took := time.Since(start)
	drills, err := r.ListDrills(ctx, b.BackupID)
	if err != nil {
		t.Fatal(err)
	}
	if len(drills) != 1 {
		t.Fatalf("%d drills recorded beside backup %s, want 1", len(drills), b.BackupID)
	}
	rec := drills[0]
	if rec.Result != repo.DrillPass || rec.ID != pass.ID || rec.TimeToReady <= 0 || rec.TimeToReady > took || rec.Teardown != "done" ||
		rec.Project != "staging" || rec.Policy != "demo-drill" || rec.Workflow != run.WorkflowID || len(rec.Guests) != 2 {
		t.Fatalf("drill record %+v (the run took %v)", rec, took)
	}
	for _, g := range rec.Guests {
		if g.ExitCode != 0 || !strings.Contains(g.OutputTail, "OK /data/ephemeral0/") {
			t.Errorf("guest %s of the drill: exit %d, output tail %q", g.VM, g.ExitCode, g.OutputTail)
		}
	}
	desc, err := c.DescribeWorkflow(ctx, run.WorkflowID, "")
	if err != nil {
		t.Fatal(err)
	}
	sa := desc.TypedSearchAttributes
	if v, _ := sa.GetKeyword(workflows.SADrill); v != "pass" {
		t.Errorf("search attribute RakshaDrill %q, want pass", v)
	}
	if v, _ := sa.GetKeyword(workflows.SABackup); v != b.BackupID {
		t.Errorf("search attribute RakshaBackup %q, want %s", v, b.BackupID)
	}
	if v, _ := sa.GetKeyword(workflows.SAWorkload); v != "demo" {
		t.Errorf("search attribute RakshaWorkload %q", v)
	}
	nothingLeft("after the passing drill", rec.Clone)
	if n := drillCount.get("pass", "demo"); n != 1 {
		t.Errorf("%s{result=pass,workload=demo} = %d after the passing drill, want 1", workflows.DrillMetric, n)
	}
	if after, err := r.LoadBackup(ctx, b.BackupID); err != nil || !reflect.DeepEqual(after, before) {
		t.Errorf("the drill changed the backup's record (%v):\n%+v\n%+v", err, before, after)
	}
	t.Logf("passing drill of backup %s in %v: time to ready %v (clone of 2 VMs into staging, booted, health check in both), teardown and record after; guests %+v",
		b.BackupID, took.Round(time.Millisecond), rec.TimeToReady.Round(time.Millisecond), rec.Guests)

	// 2. A drill whose health check fails in demo-2.
	req := ps[0].DrillRequest()
	req.HealthCheck = &activities.Hook{Name: "records", Path: "/bin/sh", Args: []string{"-c",
		`guestapp check /data/*; if [ -d /data/demo-2-data ]; then echo "drill: demo-2 is not ready" >&2; exit 3; fi`}, Timeout: 2 * time.Minute}
	start = time.Now()
	wr, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.DrillWorkflowID("demo"), TaskQueue: activities.ControlQueue},
		workflows.RestoreDrill, req)
	if err != nil {
		t.Fatal(err)
	}
	err = wr.Get(ctx, nil)
	took = time.Since(start)
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != workflows.ErrDrillFailed {
		t.Fatalf("the failing drill: %v, want type %s", err, workflows.ErrDrillFailed)
	}
	for _, want := range []string{"drill of workload demo (backup " + b.BackupID + ") failed", "health check records in demo-2 exited 3", "drill: demo-2 is not ready"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("failing drill's error lacks %q: %v", want, err)
		}
	}
	t.Logf("failing drill in %v: %v", took.Round(time.Millisecond), err)
	drills, err = r.ListDrills(ctx, b.BackupID)
	if err != nil {
		t.Fatal(err)
	}
	if len(drills) != 2 {
		t.Fatalf("%d drills recorded, want 2", len(drills))
	}
	fail := drills[1]
	if fail.Result != repo.DrillFail || fail.TimeToReady != 0 || fail.Teardown != "done" || !strings.Contains(fail.Error, "in demo-2 exited 3: ") ||
		!strings.Contains(fail.Error, "drill: demo-2 is not ready") {
		t.Errorf("failed drill's record %+v", fail)
	}
	var failed *repo.DrillGuest
	for i, g := range fail.Guests {
		if g.VM == "demo-2" {
			failed = &fail.Guests[i]
		}
	}
	if failed == nil || failed.ExitCode != 3 || !strings.Contains(failed.OutputTail, "demo-2 is not ready") || !strings.Contains(failed.OutputTail, "OK /data/") {
		t.Errorf("failed drill's guests %+v", fail.Guests)
	}
	nothingLeft("after the failing drill", fail.Clone)
	if p, f := drillCount.get("pass", "demo"), drillCount.get("fail", "demo"); p != 1 || f != 1 {
		t.Errorf("%s after both drills: %d pass, %d fail; want 1 and 1", workflows.DrillMetric, p, f)
	}
	// Visible as a failure: the run is failed and carries RakshaDrill=fail,
	// which the Web UI's query finds.
	desc, err = c.DescribeWorkflow(ctx, wr.GetID(), wr.GetRunID())
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := desc.TypedSearchAttributes.GetKeyword(workflows.SADrill); v != "fail" {
		t.Errorf("search attribute RakshaDrill %q, want fail", v)
	}
	eventually(t, 30*time.Second, `no failed drill found by RakshaDrill="fail"`, func() bool {
		resp, err := c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Namespace: "default",
			Query: `RakshaDrill = "fail" AND RakshaWorkload = "demo" AND ExecutionStatus = "Failed"`})
		return err == nil && len(resp.Executions) == 1 && resp.Executions[0].Execution.RunId == wr.GetRunID()
	})

	// Both runs replay with today's code; with RAKSHA_RECORD_HISTORIES
	// (workflows/testdata) they are kept for the replay tests.
	for name, ex := range map[string]workflow.Execution{"drill-pass": {ID: run.WorkflowID}, "drill-fail": {ID: wr.GetID(), RunID: wr.GetRunID()}} {
		h := history(t, c, ex.ID, ex.RunID)
		rp := worker.NewWorkflowReplayer()
		rp.RegisterWorkflow(workflows.RestoreDrill)
		ex.RunID = h.Events[0].GetWorkflowExecutionStartedEventAttributes().GetOriginalExecutionRunId()
		if err := rp.ReplayWorkflowHistoryWithOptions(nil, h, worker.ReplayWorkflowHistoryOptions{OriginalExecution: ex}); err != nil {
			t.Errorf("%s: today's code does not replay the history it just made: %v", name, err)
		}
		if dir := os.Getenv("RAKSHA_RECORD_HISTORIES"); dir != "" {
			out := filepath.Join(dir, "history-"+name+".json")
			if _, err := os.Stat(out); err == nil {
				t.Logf("%s exists: kept", out)
				continue
			}
			b, err := protojson.MarshalOptions{Indent: "  "}.Marshal(h)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(out, b, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d events, workflow id %s", out, len(h.Events), ex.ID)
		}
	}

	// 3. raksha backup list shows the last drill.
	bin := filepath.Join(t.TempDir(), "raksha")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(repoRoot(t), "starter")).CombinedOutput(); err != nil {
		t.Fatalf("build raksha: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "backup", "list", "--format", "json")
	cmd.Env = append(os.Environ(), "RAKSHA_REPO=file://"+e.repoDir, "RAKSHA_PASSWORD=secret")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("raksha backup list: %v\n%s", err, out)
	}
	var list []struct {
		ID        string      `json:"id"`
		LastDrill *repo.Drill `json:"last_drill"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("raksha backup list: %v\n%s", err, out)
	}
	if len(list) != 1 || list[0].ID != b.BackupID || list[0].LastDrill == nil || list[0].LastDrill.Result != "fail" || list[0].LastDrill.ID != fail.ID {
		t.Errorf("raksha backup list: %s", out)
	}
}

// drillCounter is a Temporal metrics handler that counts
// workflows.DrillMetric by result and workload (every other metric is
// dropped).
type drillCounter struct {
	tags   map[string]string
	mu     sync.Mutex
	counts map[string]int64
	root   *drillCounter
}

func (d *drillCounter) base() *drillCounter {
	if d.root != nil {
		return d.root
	}
	return d
}

func (d *drillCounter) WithTags(tags map[string]string) client.MetricsHandler {
	n := &drillCounter{tags: maps.Clone(d.tags), root: d.base()}
	if n.tags == nil {
		n.tags = map[string]string{}
	}
	maps.Copy(n.tags, tags)
	return n
}

func (d *drillCounter) Counter(name string) client.MetricsCounter {
	if name != workflows.DrillMetric {
		return client.MetricsNopHandler.Counter(name)
	}
	return drillInc{d}
}

func (d *drillCounter) Gauge(name string) client.MetricsGauge {
	return client.MetricsNopHandler.Gauge(name)
}
func (d *drillCounter) Timer(name string) client.MetricsTimer {
	return client.MetricsNopHandler.Timer(name)
}

func (d *drillCounter) get(result, workload string) int64 {
	b := d.base()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.counts[result+"/"+workload]
}

type drillInc struct{ d *drillCounter }

func (i drillInc) Inc(n int64) {
	b := i.d.base()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.counts[i.d.tags["result"]+"/"+i.d.tags["workload"]] += n
}
