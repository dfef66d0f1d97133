package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/demo"
	"github.com/raksha-backup/raksha/internal/lab/vm/vmtest"
	"github.com/raksha-backup/raksha/internal/testenv/chaos"
	"github.com/raksha-backup/raksha/policies"
	"github.com/raksha-backup/raksha/workflows"
)

// fleetSize is how many guests the load scenarios run (besides the lab's
// two demo guests): the issue asks for a workload of at least 20.
const fleetSize = 20

// copyCap is the global copy cap the load scenario sets on the copy
// semaphore: well below the disks that want copying at once.
const copyCap = 3

// TestChaosLoad runs the load rows of the chaos suite on one lab of 22 real
// QEMU guests (the demo's two and a fleet of 20, each fleet guest with its
// in-guest writer on a 1 GiB ephemeral disk), with the real copy semaphore:
//
//   - a many-VM workload: the 20 fleet guests backed up as one workload,
//     app-consistent, one guest with a slow pre-hook; its freeze window
//     (first freeze to last thaw) is measured and must stay under the
//     freeze timeout, with every pre-hook finished before the first freeze;
//   - N workloads at once: the fleet as 4 workloads of 5 guests, each a
//     policy schedule, triggered together (a full, then an incremental
//     round); the global copy cap (3 permits) must hold, counted by the
//     workers themselves (concurrent CopyDisk executions).
//
// After every round: no guest frozen, no session, no fleecing image and no
// permit left, every backup verifies, and one restored disk per workload is
// a clean file system with its records intact.
func TestChaosLoad(t *testing.T) {
	takeAllGuestSlots(t)
	copies := &copyCounter{}
	e := newLabEnvWith(t, labEnvOptions{NoSlots: true, RealSemaphore: true, Interceptors: []interceptor.WorkerInterceptor{copies}})
	ctx, c := e.ctx, e.temporal
	rng := chaos.NewRand(t)

	// The copy semaphore, started with the cap before any backup asks it.
	if _, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.CopySemaphoreID, TaskQueue: activities.ControlQueue},
		workflows.Semaphore, workflows.SemaphoreState{Permits: copyCap}); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	fleet := makeFleet(t, e.labDemo, "fleet", fleetSize)
	t.Logf("fleet of %d guests (1 GiB ephemeral disk and writer each) up in %v", len(fleet), time.Since(start).Round(time.Second))

	// The demo's two guests, for the window of a small workload beside it.
	small := runBackup(t, c, workflows.BackupRequest{Workload: "demo", Project: "demo", Repository: "main", Consistency: "app",
		Selector: cloud.Selector{Workload: "demo"}, FreezeTimeout: time.Minute})
	t.Logf("2-guest workload: freeze window %v (per VM %v)", small.WorkloadWindow, small.FreezeWindows)

	manyVM(t, e, fleet, rng)
	nWorkloads(t, e, fleet, copies)
}

// manyVM is the many-VM workload row.
func manyVM(t *testing.T, e *labEnv, fleet []fleetGuest, rng interface{ IntN(int) int }) {
	c := e.temporal
	rounds := chaos.Rounds(t, 2)
	row := chaos.Row{Scenario: fmt.Sprintf("load: one workload of %d guests, app-consistent, a 5 s pre-hook on one guest", len(fleet)),
		Components: fmt.Sprintf("dev server, lab (%d QEMU guests + qemu-ga, in-process control and host workers), copy semaphore at %d permits, local repository", len(fleet)+2, copyCap),
		Rounds:     rounds}
	const freezeTimeout = time.Minute
	var notes []string
	for round := range rounds {
		slow := fleet[rng.IntN(len(fleet))]
		setSlowMarker(t, e, fleet, slow)
		req := workflows.BackupRequest{Workload: "fleet", Project: "demo", Repository: "main", Consistency: "app",
			Selector: cloud.Selector{Workload: "fleet"}, FreezeTimeout: freezeTimeout,
			PreHooks: []activities.Hook{{Path: "/bin/sh", Args: []string{"-c", "if [ -e /tmp/raksha-slow ]; then sleep 5; fi"}, Timeout: 30 * time.Second}},
			Operator: true} // the test is the operator: hooks are its to give
		began := time.Now()
		wr, res, err := startAndWait(t, c, req)
		took := time.Since(began)
		row.GuestsLeftFrozen += e.frozenGuests(t)
		row.Orphans += leftovers(t, e, round)
		if err != nil {
			t.Errorf("round %d: the %d-guest backup failed: %v", round, len(fleet), err)
			row.FailedCleanly++
			continue
		}
		if res.Consistency != "app" || res.VMs != len(fleet) || len(res.Disks) != len(fleet) || len(res.FreezeWindows) != len(fleet) {
			t.Errorf("round %d: result: consistency %q, %d VMs, %d disks, %d windows; want app and %d of each", round, res.Consistency, res.VMs, len(res.Disks), len(res.FreezeWindows), len(fleet))
		}
		if res.WorkloadWindow <= 0 || res.WorkloadWindow >= freezeTimeout {
			t.Errorf("round %d: workload freeze window %v: want it above 0 and under the freeze timeout %v", round, res.WorkloadWindow, freezeTimeout)
		}
		if round > 0 {
			var size int64
			for _, d := range res.Disks {
				size += d.Size
				if !d.Incremental {
					t.Errorf("round %d: disk %s read in full", round, d.Manifest)
				}
			}
			if res.BytesRead*20 > size {
				t.Errorf("round %d: the incremental read %d of %d bytes: more than 5%%", round, res.BytesRead, size)
			}
		}
		var perVM []time.Duration
		for vm, w := range res.FreezeWindows {
			perVM = append(perVM, w)
			if w > res.WorkloadWindow {
				t.Errorf("round %d: %s's window %v is longer than the workload's %v", round, vm, w, res.WorkloadWindow)
			}
		}
		slices.Sort(perVM)
		hooksDone, firstFreeze := hooksBeforeFreeze(t, c, wr)
		if !hooksDone.Before(firstFreeze) {
			t.Errorf("round %d: the last pre-hook ended at %v, after the first freeze was asked at %v", round, hooksDone, firstFreeze)
		}
		row.WronglyGood += verifyAndRestore(t, e, res, 2)
		row.Completed++
		note := fmt.Sprintf("round %d (%s): workload window %.2fs, per VM median %.2fs, max %.2fs; backup %.1fs, read %d MiB",
			round+1, map[bool]string{true: "full", false: "incremental"}[round == 0], res.WorkloadWindow.Seconds(),
			perVM[len(perVM)/2].Seconds(), perVM[len(perVM)-1].Seconds(), took.Seconds(), res.BytesRead>>20)
		notes = append(notes, note)
		t.Log(note)
	}
	setSlowMarker(t, e, fleet, fleetGuest{})
	row.Notes = strings.Join(notes, "; ") + fmt.Sprintf("; freeze timeout %v; every pre-hook ended before the first freeze was asked", freezeTimeout)
	chaos.Record(t, row)
}

// nWorkloads is the N-workloads-at-once row.
func nWorkloads(t *testing.T, e *labEnv, fleet []fleetGuest, copies *copyCounter) {
	ctx, c := e.ctx, e.temporal
	sc := c.ScheduleClient()
	const groups = 4
	per := len(fleet) / groups
	var names []string
	for g := range groups {
		var ids []string
		for _, s := range fleet[g*per : (g+1)*per] {
			ids = append(ids, s.id)
		}
		name := fmt.Sprintf("load-%d", g+1)
		yml := fmt.Sprintf(`name: %s
workload: %s
selector:
  project: demo
  servers: [%s]
schedule:
  every: 1h
  catchup_window: 1m
consistency:
  mode: app
  on_app_failure: fail
  freeze_timeout: 1m
repository: main
paused: true
`, name, name, strings.Join(ids, ", "))
		ps, err := policies.Parse(name+".yaml", []byte(yml))
		if err != nil {
			t.Fatalf("policy %s: %v", name, err)
		}
		p := ps[0]
		if res, err := policies.Apply(ctx, sc, p); err != nil || res.Action != policies.Created {
			t.Fatalf("apply %s: %+v, %v", name, res, err)
		}
		t.Cleanup(func() { policies.Delete(context.Background(), sc, name) })
		names = append(names, name)
	}
	rounds := chaos.Rounds(t, 2)
	row := chaos.Row{Scenario: fmt.Sprintf("load: %d workloads of %d guests on schedules, triggered at once, global copy cap %d", groups, per, copyCap),
		Components: fmt.Sprintf("dev server (schedules), lab (%d QEMU guests + qemu-ga, in-process control and host workers), copy semaphore, local repository", len(fleet)+2),
		Rounds:     rounds}
	var notes []string
	seen := map[string]bool{}
	for round := range rounds {
		copies.reset()
		began := time.Now()
		for _, name := range names {
			if err := policies.Trigger(ctx, sc, name); err != nil {
				t.Fatal(err)
			}
		}
		var runs []policies.Run
		eventually(t, time.Minute, "the triggered schedules started their backups", func() bool {
			runs = runs[:0]
			for _, name := range names {
				st, err := policies.Show(ctx, sc, name)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range st.Recent {
					if r.WorkflowID != "" && !seen[r.RunID] {
						runs = append(runs, r)
						break
					}
				}
			}
			return len(runs) == len(names)
		})
		var slowest time.Duration
		var readMiB int64
		failed := 0
		for _, r := range runs {
			seen[r.RunID] = true
			var res workflows.BackupResult
			wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
			err := c.GetWorkflow(wctx, r.WorkflowID, r.RunID).Get(wctx, &res)
			cancel()
			if err != nil {
				t.Errorf("round %d: scheduled backup %s failed: %v", round, r.WorkflowID, err)
				failed++
				continue
			}
			slowest = max(slowest, time.Since(began))
			readMiB += res.BytesRead >> 20
			if res.Consistency != "app" || res.VMs != per || len(res.Disks) != per {
				t.Errorf("round %d: %s: consistency %q, %d VMs, %d disks; want app, %d, %d", round, r.WorkflowID, res.Consistency, res.VMs, len(res.Disks), per, per)
			}
			if round > 0 {
				for _, d := range res.Disks {
					if !d.Incremental {
						t.Errorf("round %d: %s: disk %s read in full", round, r.WorkflowID, d.Manifest)
					}
				}
			}
			row.WronglyGood += verifyAndRestore(t, e, &res, 1)
		}
		row.GuestsLeftFrozen += e.frozenGuests(t)
		row.Orphans += leftovers(t, e, round)
		peak, total := copies.stats()
		if peak > copyCap {
			t.Errorf("round %d: %d copies ran at once; the global cap is %d", round, peak, copyCap)
			row.WronglyGood++ // a broken promise must show in the report
		}
		if total != len(fleet) {
			t.Errorf("round %d: %d copies ran; want one per disk, %d", round, total, len(fleet))
		}
		if failed > 0 {
			row.FailedCleanly++
		} else {
			row.Completed++
		}
		note := fmt.Sprintf("round %d: %d backups done %.1fs after the triggers, %d copies, at most %d at once, read %d MiB",
			round+1, len(runs)-failed, slowest.Seconds(), total, peak, readMiB)
		notes = append(notes, note)
		t.Log(note)
	}
	row.Notes = strings.Join(notes, "; ")
	chaos.Record(t, row)
}

// fleetGuest is one guest of the fleet.
type fleetGuest struct{ id, name, instance string }

// makeFleet creates n servers of project demo (flavor m1.lab: a 1 GiB
// ephemeral disk with the in-guest writer) whose metadata puts them in
// workload, as the demo user through the OpenStack API, and waits for them.
func makeFleet(t *testing.T, d *labDemo, workload string, n int) []fleetGuest {
	t.Helper()
	ctx := d.ctx
	// Nova's default quota (10 instances, 20 cores, 50 GiB RAM) is below a
	// fleet: the operator raises the project's, as on a real cloud.
	if err := d.lab.SetQuota("demo", lab.Quota{Instances: n + 10, Cores: 2 * (n + 10), RAM: 512 * (n + 10)}); err != nil {
		t.Fatal(err)
	}
	cl, err := cloud.Connect(ctx, cloud.Config{Cloud: demo.DemoCloud, CloudsFile: filepath.Join(d.dir, "clouds.yaml"), PollInterval: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// Created a few at a time, as an operator would roll out a fleet: 20
	// guests booting at once under TCG on 2 cores miss the lab's boot
	// timeout.
	const batch = 4
	out := make([]fleetGuest, n)
	for i := range out {
		name := fmt.Sprintf("%s-%02d", workload, i+1)
		id, err := cl.CreateServer(ctx, &cloud.ServerMeta{Name: name, Metadata: map[string]string{cloud.WorkloadKey: workload},
			Flavor: cloud.FlavorMeta{Name: lab.Flavor}, Image: &cloud.ImageMeta{Name: lab.GuestImage},
			Ports: []cloud.PortMeta{{NetworkName: lab.Network}}, SecurityGroups: []cloud.SecurityGroupMeta{{Name: "default"}}}, nil, cloud.Remap{})
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		out[i] = fleetGuest{id: id, name: name}
		if (i+1)%batch == 0 || i == n-1 {
			for j := i / batch * batch; j <= i; j++ {
				if err := cl.WaitServer(ctx, out[j].id, "ACTIVE", 10*time.Minute); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, s := range d.lab.Servers() {
		for i := range out {
			if out[i].id == s.ID {
				out[i].instance = s.InstanceRef.Name
			}
		}
	}
	for _, g := range out {
		if g.instance == "" {
			t.Fatalf("server %s (%s) has no instance in the lab", g.name, g.id)
		}
	}
	return out
}

// setSlowMarker makes slow the one fleet guest whose pre-hook sleeps
// (/tmp/raksha-slow), and no other; the zero guest clears it everywhere.
func setSlowMarker(t *testing.T, e *labEnv, fleet []fleetGuest, slow fleetGuest) {
	t.Helper()
	for _, g := range fleet {
		cmd := "rm -f /tmp/raksha-slow"
		if g.id == slow.id {
			cmd = "touch /tmp/raksha-slow"
		}
		ag, err := e.agent(e.ctx, g.instance)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ag.Run(e.ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", cmd}})
		ag.Close()
		if err != nil {
			t.Fatalf("%s: %s: %v", g.name, cmd, err)
		}
	}
}

// runBackup runs a backup to its end and fails the test if it fails.
func runBackup(t *testing.T, c client.Client, req workflows.BackupRequest) *workflows.BackupResult {
	t.Helper()
	_, res, err := startAndWait(t, c, req)
	if err != nil {
		t.Fatalf("backup of %s: %v", req.Workload, err)
	}
	return res
}

// startAndWait starts a backup and waits for its end (at most 10 minutes).
func startAndWait(t *testing.T, c client.Client, req workflows.BackupRequest) (client.WorkflowRun, *workflows.BackupResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	wr, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.BackupWorkflowID(req.Project, req.Workload),
		TaskQueue: activities.ControlQueue}, workflows.WorkloadBackup, req)
	if err != nil {
		t.Fatal(err)
	}
	var res workflows.BackupResult
	err = wr.Get(ctx, &res)
	return wr, &res, err
}

// hooksBeforeFreeze reads a backup's history: when its last pre-hook
// activity (RunHooks before any Freeze) completed, and when its first
// Freeze was scheduled.
func hooksBeforeFreeze(t *testing.T, c client.Client, wr client.WorkflowRun) (hooksDone, firstFreeze time.Time) {
	t.Helper()
	types := map[int64]string{}
	iter := c.GetWorkflowHistory(context.Background(), wr.GetID(), wr.GetRunID(), false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for iter.HasNext() {
		ev, err := iter.Next()
		if err != nil {
			t.Fatal(err)
		}
		if a := ev.GetActivityTaskScheduledEventAttributes(); a != nil {
			types[ev.GetEventId()] = a.GetActivityType().GetName()
			if a.GetActivityType().GetName() == "Freeze" && firstFreeze.IsZero() {
				firstFreeze = ev.GetEventTime().AsTime()
			}
		}
		if a := ev.GetActivityTaskCompletedEventAttributes(); a != nil && types[a.GetScheduledEventId()] == "RunHooks" && firstFreeze.IsZero() {
			hooksDone = ev.GetEventTime().AsTime()
		}
	}
	if hooksDone.IsZero() || firstFreeze.IsZero() {
		t.Fatalf("backup %s: no pre-hook (%v) or no freeze (%v) in its history", wr.GetID(), hooksDone, firstFreeze)
	}
	return hooksDone, firstFreeze
}

// verifyAndRestore verifies a committed backup and restores n of its disks
// (file system clean, records intact); it returns 1 if the backup does not
// verify (reported good but not), else 0.
func verifyAndRestore(t *testing.T, e *labEnv, res *workflows.BackupResult, n int) int {
	t.Helper()
	r := mustRepo(t, e.be)
	if _, err := r.Verify(e.ctx, []string{res.BackupID}, nil); err != nil {
		t.Errorf("backup %s reported good does not verify: %v", res.BackupID, err)
		return 1
	}
	for _, d := range res.Disks[:min(n, len(res.Disks))] {
		restoreAndCheck(e.ctx, t, r, d.Manifest, d.Size, filepath.Join(e.dir, "restored.raw"))
	}
	return 0
}

// leftovers counts what a finished round left behind: open backup sessions,
// fleecing images in the host worker's work directory, and permits held or
// asked for at the copy semaphore.
func leftovers(t *testing.T, e *labEnv, round int) int {
	t.Helper()
	n := countSessions(t, e.repoDir)
	fleece, _ := filepath.Glob(filepath.Join(e.dir, "work", "*", "fleece-*"))
	n += len(fleece)
	var st workflows.SemaphoreState
	eventually(t, 30*time.Second, "the copy semaphore answered its state query", func() bool {
		v, err := e.temporal.QueryWorkflow(e.ctx, workflows.CopySemaphoreID, "", workflows.SemaphoreStateQuery)
		return err == nil && v.Get(&st) == nil
	})
	n += len(st.Holders) + len(st.Waiting)
	if n != 0 {
		t.Errorf("round %d: left behind: %d sessions/fleecing images/permits (fleecing %v, holders %v, waiting %v)", round, n, fleece, st.Holders, st.Waiting)
	}
	return n
}

// takeAllGuestSlots holds every machine-wide guest slot for the test, so
// that no other test process runs guests beside the ones it starts without
// slots (labEnvOptions.NoSlots).
func takeAllGuestSlots(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	release, err := vmtest.AcquireSlots(ctx, vmtest.MaxGuests())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
}

// copyCounter is a worker interceptor that counts the CopyDisk activities
// running at once in the workers it is on.
type copyCounter struct {
	interceptor.WorkerInterceptorBase
	mu                   sync.Mutex
	running, peak, total int
}

func (c *copyCounter) InterceptActivity(ctx context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	i := &copyCounterInbound{c: c}
	i.Next = next
	return i
}

func (c *copyCounter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peak, c.total = c.running, 0
}

// stats returns the most copies seen at once and the copies started since
// the last reset.
func (c *copyCounter) stats() (peak, total int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peak, c.total
}

type copyCounterInbound struct {
	interceptor.ActivityInboundInterceptorBase
	c *copyCounter
}

func (i *copyCounterInbound) ExecuteActivity(ctx context.Context, in *interceptor.ExecuteActivityInput) (any, error) {
	if activity.GetInfo(ctx).ActivityType.Name != "CopyDisk" {
		return i.Next.ExecuteActivity(ctx, in)
	}
	i.c.mu.Lock()
	i.c.running++
	i.c.total++
	i.c.peak = max(i.c.peak, i.c.running)
	i.c.mu.Unlock()
	defer func() {
		i.c.mu.Lock()
		i.c.running--
		i.c.mu.Unlock()
	}()
	return i.Next.ExecuteActivity(ctx, in)
}
