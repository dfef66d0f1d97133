package workflows

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
)

// twoVMPlan is a backup of two servers, each with a volume and an
// ephemeral disk.
var twoVMPlan = activities.RestorePlan{BackupID: "b1", Project: "p1", Workload: "demo", Bytes: 4 << 30, VMs: []activities.RestorePlanVM{
	{Name: "db", ServerID: "s-db", ServerName: "db", Host: "h1", Instance: "instance-1", Status: "ACTIVE", Disks: []activities.RestorePlanDisk{
		{Manifest: "b1/db/vol-v1", Disk: "vol-v1", Size: 1 << 30, VolumeID: "v1", VolumeName: "db-data", SizeGB: 1, Ephemeral: -1},
		{Manifest: "b1/db/disk0", Disk: "disk0", Size: 1 << 30, SizeGB: 1, Ephemeral: 0}}},
	{Name: "web", ServerID: "s-web", ServerName: "web", Host: "h2", Instance: "instance-2", Status: "SHUTOFF", Disks: []activities.RestorePlanDisk{
		{Manifest: "b1/web/vol-v2", Disk: "vol-v2", Size: 1 << 30, VolumeID: "v2", VolumeName: "web-data", SizeGB: 1, Ephemeral: -1},
		{Manifest: "b1/web/disk0", Disk: "disk0", Size: 1 << 30, SizeGB: 1, Ephemeral: 0}}},
}}

type restoreFixture struct {
	env *testsuite.TestWorkflowEnvironment
	rec *recorder

	mu      sync.Mutex
	status  map[string]string // server → status
	volumes map[string]bool   // live volumes made by the restore
	servers map[string]bool   // live servers made by the restore
	nvol    int
	// overrides
	writeDisk func(activities.WriteDiskInput) (*activities.WriteDiskResult, error)
	guestRun  func(activities.GuestRunInput) (*activities.GuestRunResult, error)
	// guestAfter delays every GuestRun by this much mock-clock time.
	guestAfter time.Duration
	// stuck servers cannot be deleted.
	stuck     map[string]bool
	createIn  []activities.CreateServerInput
	volumesIn []activities.CreateVolumeInput
	writes    []activities.WriteDiskInput
	writeQ    map[string]string // manifest → "stopped"/"running" state of its server when written
}

func newRestoreFixture(t *testing.T) *restoreFixture { return newRestoreFixtureWith(t, nil) }

// newRestoreFixtureWith is newRestoreFixture whose workflows emit metrics
// to mh (when not nil).
func newRestoreFixtureWith(t *testing.T, mh client.MetricsHandler) *restoreFixture {
	var s testsuite.WorkflowTestSuite
	if mh != nil {
		s.SetMetricsHandler(mh)
	}
	env := s.NewTestWorkflowEnvironment()
	acts := activities.New(activities.Config{})
	env.RegisterActivity(acts)
	env.RegisterWorkflow(Restore)
	checkRoleQueues(t, env)
	env.RegisterWorkflow(Clone)
	env.RegisterWorkflow(CloneDelete)
	f := &restoreFixture{env: env, rec: &recorder{}, status: map[string]string{"s-db": "ACTIVE", "s-web": "SHUTOFF"},
		volumes: map[string]bool{}, servers: map[string]bool{}, writeQ: map[string]string{}}
	env.OnActivity(acts.PlanRestore, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PlanRestoreInput) (*activities.RestorePlan, error) {
		f.rec.add("plan")
		if in.BackupID != "b1" {
			return nil, temporal.NewNonRetryableApplicationError("backup "+in.BackupID+": not in repository main", activities.ErrNotFound, nil)
		}
		p := twoVMPlan
		return &p, nil
	})
	env.OnActivity(acts.CreateRestoreVolume, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.CreateVolumeInput) (string, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.nvol++
		id := fmt.Sprintf("new-vol-%d", f.nvol)
		f.volumes[id] = true
		f.volumesIn = append(f.volumesIn, in)
		f.rec.add("create-volume " + id)
		return id, nil
	})
	env.OnActivity(acts.WaitRestoreVolume, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(acts.ConnectVolume, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.VolumeRef) (*cloud.Connection, error) {
		f.rec.add("connect " + in.VolumeID)
		return &cloud.Connection{Type: "local", Path: "/lab/volumes/volume-" + in.VolumeID + ".qcow2", Format: "qcow2", Hosts: []string{"h1"}}, nil
	})
	env.OnActivity(acts.DisconnectVolume, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.VolumeRef) error {
		f.rec.add("disconnect " + in.VolumeID)
		return nil
	})
	env.OnActivity(acts.WriteDisk, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.WriteDiskInput) (*activities.WriteDiskResult, error) {
		f.mu.Lock()
		f.writes = append(f.writes, in)
		state := "no server"
		for id, st := range f.status {
			if in.Target.Instance != "" && strings.TrimPrefix(in.Target.Instance, "inst-") == id {
				state = st
			}
		}
		f.writeQ[in.Manifest] = state
		f.mu.Unlock()
		f.rec.add("write " + in.Manifest)
		if f.writeDisk != nil {
			return f.writeDisk(in)
		}
		return &activities.WriteDiskResult{Manifest: in.Manifest, Size: 1 << 30, BytesFetched: 100 << 20, Seconds: 1}, nil
	})
	env.OnActivity(acts.CreateRestoreServer, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.CreateServerInput) (string, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		id := "new-" + in.VM
		f.servers[id] = true
		f.status[id] = "ACTIVE"
		f.createIn = append(f.createIn, in)
		f.rec.add("create-server " + in.VM)
		return id, nil
	})
	info := func(id string) *activities.ServerInfo {
		f.mu.Lock()
		defer f.mu.Unlock()
		host := "h1"
		if strings.Contains(id, "web") {
			host = "h2"
		}
		return &activities.ServerInfo{ServerID: id, Name: id, Status: f.status[id], Host: host, Instance: "inst-" + id}
	}
	env.OnActivity(acts.WaitRestoreServer, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.ServerRef) (*activities.ServerInfo, error) {
		return info(in.ServerID), nil
	})
	env.OnActivity(acts.ServerInfo, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.ServerRef) (*activities.ServerInfo, error) {
		return info(in.ServerID), nil
	})
	env.OnActivity(acts.PowerServer, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.PowerInput) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.status[in.ServerID] = map[string]string{"stop": "SHUTOFF", "start": "ACTIVE"}[in.Action]
		f.rec.add(in.Action + " " + in.ServerID)
		return nil
	})
	env.OnActivity(acts.DeleteRestoreServer, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.ServerRef) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.stuck[in.ServerID] {
			return temporal.NewNonRetryableApplicationError("server "+in.ServerID+" is stuck in ERROR", "Stuck", nil)
		}
		delete(f.servers, in.ServerID)
		f.rec.add("delete-server " + in.ServerID)
		return nil
	})
	env.OnActivity(acts.DeleteRestoreVolume, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.VolumeRef) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.volumes, in.VolumeID)
		f.rec.add("delete-volume " + in.VolumeID)
		return nil
	})
	env.OnActivity(acts.GuestRun, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.GuestRunInput) (*activities.GuestRunResult, error) {
		f.rec.add("guest-run " + in.Instance + " " + in.Hook.Path)
		if f.guestRun != nil {
			return f.guestRun(in)
		}
		return &activities.GuestRunResult{ExitCode: 0, Stdout: "ok"}, nil
	}).AfterFn(func() time.Duration { return f.guestAfter })
	env.OnActivity(acts.FindByLabel, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.FindByLabelInput) (*activities.Resources, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.rec.add("find-by-label " + in.Key)
		r := &activities.Resources{}
		for id := range f.servers {
			r.Servers = append(r.Servers, id)
		}
		for id := range f.volumes {
			r.Volumes = append(r.Volumes, id)
		}
		return r, nil
	})
	return f
}

func (f *restoreFixture) before(t *testing.T, a, b string) {
	t.Helper()
	i, j := f.rec.index(a), f.rec.index(b)
	if i < 0 || j < 0 || i > j {
		t.Errorf("want %q (at %d) before %q (at %d); calls %v", a, i, b, j, f.rec.calls)
	}
}

func TestRestoreNewServers(t *testing.T) {
	f := newRestoreFixture(t)
	f.env.ExecuteWorkflow(Restore, RestoreRequest{Repository: "main", BackupID: "b1", NamePrefix: "r-", Networks: map[string]string{"net1": "net2"}})
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var res RestoreResult
	if err := f.env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if len(res.Servers) != 2 || len(res.Volumes) != 2 || len(res.Disks) != 4 || res.Bytes != 4<<30 || res.Project != "p1" {
		t.Fatalf("result %+v", res)
	}
	// Volumes are written before any server uses them.
	f.before(t, "write b1/db/vol-v1", "create-server db")
	f.before(t, "write b1/web/vol-v2", "create-server db")
	f.before(t, "disconnect new-vol-1", "create-server db")
	// Ephemeral disks are written while their new server is stopped.
	for _, m := range []string{"b1/db/disk0", "b1/web/disk0"} {
		if f.writeQ[m] != "SHUTOFF" {
			t.Errorf("%s written while its server was %q", m, f.writeQ[m])
		}
	}
	f.before(t, "stop new-db", "write b1/db/disk0")
	f.before(t, "write b1/db/disk0", "start new-db")
	for _, w := range f.writes {
		if strings.HasSuffix(w.Manifest, "disk0") && (w.Target.Kind != "instance-disk" || w.Target.File != "disk.eph0" || w.Target.Instance != "inst-new-"+strings.Split(w.Manifest, "/")[1]) {
			t.Errorf("ephemeral target %+v", w.Target)
		}
	}
	// The new servers get the restored volumes and the labels.
	for _, c := range f.createIn {
		if len(c.Volumes) != 1 || c.NamePrefix != "r-" || c.Networks["net1"] != "net2" || c.Metadata[activities.MetaRestoredFrom] != "s-"+c.VM ||
			c.Metadata[activities.MetaBackup] != "b1" || c.Metadata[activities.MetaRestore] == "" {
			t.Errorf("create server input %+v", c)
		}
	}
	for _, v := range f.volumesIn {
		if !strings.HasPrefix(v.Name, "r-") || v.Metadata[activities.MetaRestoredFrom] == "" || v.SizeGB != 1 {
			t.Errorf("create volume input %+v", v)
		}
	}
	if n := f.rec.count("delete"); n != 0 {
		t.Errorf("%d deletes after a successful restore", n)
	}
}

func TestRestoreFailureCleansUp(t *testing.T) {
	f := newRestoreFixture(t)
	f.writeDisk = func(in activities.WriteDiskInput) (*activities.WriteDiskResult, error) {
		if in.Manifest == "b1/web/disk0" {
			return nil, temporal.NewNonRetryableApplicationError("restore backup b1 vm web disk disk0: chunk 3: corrupt object", activities.ErrCorrupt, nil)
		}
		return &activities.WriteDiskResult{Manifest: in.Manifest, Size: 1 << 30}, nil
	}
	f.env.ExecuteWorkflow(Restore, RestoreRequest{Repository: "main", BackupID: "b1"})
	err := f.env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "b1/web/disk0") || !strings.Contains(err.Error(), "corrupt object") {
		t.Fatalf("error %v, want the failing disk named", err)
	}
	if len(f.servers) != 0 || len(f.volumes) != 0 {
		t.Errorf("left behind: servers %v volumes %v", f.servers, f.volumes)
	}
	f.before(t, "delete-server new-db", "delete-volume new-vol-1")
}

func TestRestoreCancelCleansUp(t *testing.T) {
	f := newRestoreFixture(t)
	f.writeDisk = func(in activities.WriteDiskInput) (*activities.WriteDiskResult, error) {
		if in.Manifest == "b1/db/disk0" { // servers exist by now
			f.env.CancelWorkflow()
			return nil, temporal.NewCanceledError()
		}
		return &activities.WriteDiskResult{Manifest: in.Manifest, Size: 1 << 30}, nil
	}
	f.env.ExecuteWorkflow(Restore, RestoreRequest{Repository: "main", BackupID: "b1"})
	if err := f.env.GetWorkflowError(); err == nil || !strings.Contains(strings.ToLower(err.Error()), "cancel") {
		t.Fatalf("error %v, want canceled", err)
	}
	if f.rec.count("create-server") != 2 {
		t.Fatalf("the cancel came before the servers were made: %v", f.rec.calls)
	}
	if len(f.servers) != 0 || len(f.volumes) != 0 {
		t.Errorf("left behind after cancel: servers %v volumes %v (calls %v)", f.servers, f.volumes, f.rec.calls)
	}
}

func TestRestoreInPlace(t *testing.T) {
	f := newRestoreFixture(t)
	f.env.ExecuteWorkflow(Restore, RestoreRequest{Repository: "main", BackupID: "b1", InPlace: true})
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if n := f.rec.count("create"); n != 0 {
		t.Errorf("an in-place restore created %d resources", n)
	}
	f.before(t, "stop s-db", "write b1/db/vol-v1")
	f.before(t, "write b1/db/vol-v1", "start s-db")
	if f.rec.index("start s-web") >= 0 {
		t.Error("the server that was SHUTOFF before the rollback was started")
	}
	for _, w := range f.writes {
		if strings.HasSuffix(w.Manifest, "disk0") && w.Target.Instance != "inst-s-"+strings.Split(w.Manifest, "/")[1] {
			t.Errorf("ephemeral rollback target %+v", w.Target)
		}
	}
}

func TestRestoreInPlaceFailureLeavesServersStopped(t *testing.T) {
	f := newRestoreFixture(t)
	f.writeDisk = func(in activities.WriteDiskInput) (*activities.WriteDiskResult, error) {
		return nil, temporal.NewNonRetryableApplicationError("target image /x: the disk image is in use", activities.ErrInvalid, nil)
	}
	f.env.ExecuteWorkflow(Restore, RestoreRequest{Repository: "main", BackupID: "b1", InPlace: true})
	err := f.env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "servers stay stopped") {
		t.Fatalf("error %v", err)
	}
	if f.rec.index("start s-db") >= 0 {
		t.Error("a half-rolled-back server was started")
	}
}

func TestCloneHooksAndDelete(t *testing.T) {
	f := newRestoreFixture(t)
	f.env.ExecuteWorkflow(Clone, CloneRequest{Name: "stg1", RestoreRequest: RestoreRequest{Repository: "main", BackupID: "b1", Project: "staging",
		NamePrefix: "stg-", PostHooks: []activities.Hook{{Path: "/bin/mask"}}, HealthCheck: &activities.Hook{Path: "/bin/health"}, Operator: true}})
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	for _, c := range f.createIn {
		if c.Project != "staging" || c.Metadata[activities.MetaClone] != "stg1" {
			t.Errorf("clone server input %+v", c)
		}
		if v, ok := c.Metadata[cloud.WorkloadKey]; !ok || v != "" {
			t.Errorf("clone keeps the workload label: %+v", c.Metadata)
		}
	}
	f.before(t, "start new-db", "guest-run inst-new-db /bin/mask")
	f.before(t, "guest-run inst-new-db /bin/mask", "guest-run inst-new-db /bin/health")

	// Tear it down.
	g := newRestoreFixture(t)
	g.servers, g.volumes = f.servers, f.volumes
	g.env.ExecuteWorkflow(CloneDelete, CloneDeleteRequest{Name: "stg1", Project: "staging"})
	if err := g.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if len(g.servers)+len(g.volumes) != 0 {
		t.Errorf("clone delete left %v %v", g.servers, g.volumes)
	}
}

// TestCloneDeleteOfNothing: deleting a clone of which nothing is left fails
// as ErrNotFound, unless the request says MissingOK (a drill's teardown of
// a clone that deleted itself), which succeeds with nothing removed.
func TestCloneDeleteOfNothing(t *testing.T) {
	f := newRestoreFixture(t)
	f.env.ExecuteWorkflow(CloneDelete, CloneDeleteRequest{Name: "gone", Project: "staging"})
	var ae *temporal.ApplicationError
	if err := f.env.GetWorkflowError(); !errors.As(err, &ae) || ae.Type() != activities.ErrNotFound {
		t.Fatalf("delete of a clone of which nothing is left: %v; want %s", err, activities.ErrNotFound)
	}
	g := newRestoreFixture(t)
	g.env.ExecuteWorkflow(CloneDelete, CloneDeleteRequest{Name: "gone", Project: "staging", MissingOK: true})
	if err := g.env.GetWorkflowError(); err != nil {
		t.Fatalf("delete with MissingOK of a clone of which nothing is left: %v", err)
	}
	var res CloneDeleteResult
	if err := g.env.GetWorkflowResult(&res); err != nil || len(res.Servers)+len(res.Volumes) != 0 {
		t.Errorf("result %+v, %v; want nothing removed", res, err)
	}
}

func TestCloneHookFailureDeletesClone(t *testing.T) {
	f := newRestoreFixture(t)
	f.guestRun = func(in activities.GuestRunInput) (*activities.GuestRunResult, error) {
		return &activities.GuestRunResult{ExitCode: 3, Stderr: "masking failed"}, nil
	}
	f.env.ExecuteWorkflow(Clone, CloneRequest{Name: "stg1", RestoreRequest: RestoreRequest{Repository: "main", BackupID: "b1", Project: "staging",
		PostHooks: []activities.Hook{{Path: "/bin/mask"}}, Operator: true}})
	err := f.env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "exited 3: masking failed") {
		t.Fatalf("error %v", err)
	}
	if len(f.servers)+len(f.volumes) != 0 {
		t.Errorf("a clone whose masking failed was left: %v %v", f.servers, f.volumes)
	}
}

func TestRestoreBadInput(t *testing.T) {
	for _, tc := range []struct {
		req  RestoreRequest
		want string
	}{
		{RestoreRequest{BackupID: "b1"}, "repository id is empty"},
		{RestoreRequest{Repository: "main", BackupID: "b1", InPlace: true, Project: "x"}, "takes no target project"},
		{RestoreRequest{Repository: "main", BackupID: "nope"}, "backup nope: not in repository main"},
	} {
		f := newRestoreFixture(t)
		f.env.ExecuteWorkflow(Restore, tc.req)
		if err := f.env.GetWorkflowError(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.req, err, tc.want)
		}
	}
}

// TestRestoreSweepsStrays: a volume create whose answer was lost (retried,
// so made twice) leaves a labelled stray; the restore deletes it and keeps
// what it uses.
func TestRestoreSweepsStrays(t *testing.T) {
	f := newRestoreFixture(t)
	f.volumes["stray-vol"] = true
	f.env.ExecuteWorkflow(Restore, RestoreRequest{Repository: "main", BackupID: "b1"})
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if f.volumes["stray-vol"] || len(f.volumes) != 2 || len(f.servers) != 2 {
		t.Errorf("after the sweep: volumes %v servers %v", f.volumes, f.servers)
	}
}

// TestRestoreCapsParallelWrites: with MaxParallelWrites 1 the disks are
// written one at a time; every disk is still written once.
func TestRestoreCapsParallelWrites(t *testing.T) {
	f := newRestoreFixture(t)
	var mu sync.Mutex
	running, peak := 0, 0
	f.writeDisk = func(in activities.WriteDiskInput) (*activities.WriteDiskResult, error) {
		mu.Lock()
		running++
		peak = max(peak, running)
		mu.Unlock()
		time.Sleep(20 * time.Millisecond)
		mu.Lock()
		running--
		mu.Unlock()
		return &activities.WriteDiskResult{Manifest: in.Manifest, Size: 1 << 30}, nil
	}
	f.env.ExecuteWorkflow(Restore, RestoreRequest{Repository: "main", BackupID: "b1", MaxParallelWrites: 1})
	if err := f.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var res RestoreResult
	f.env.GetWorkflowResult(&res)
	if peak != 1 || len(res.Disks) != 4 || f.rec.count("write ") != 4 {
		t.Errorf("peak %d parallel writes, %d disks written (calls %v)", peak, len(res.Disks), f.rec.calls)
	}
}

// TestRestoreHooksNeedOperator: post-restore hooks or a health check in a
// request not marked as the operator's are refused before anything is
// made or run.
func TestRestoreHooksNeedOperator(t *testing.T) {
	for _, req := range []RestoreRequest{
		{Repository: "main", BackupID: "b1", Project: "staging", PostHooks: []activities.Hook{{Path: "/bin/mask"}}},
		{Repository: "main", BackupID: "b1", Project: "staging", HealthCheck: &activities.Hook{Path: "/bin/health"}},
	} {
		f := newRestoreFixture(t)
		f.env.ExecuteWorkflow(Clone, CloneRequest{Name: "stg1", RestoreRequest: req})
		err := f.env.GetWorkflowError()
		if err == nil || !strings.Contains(err.Error(), "not marked operator") {
			t.Errorf("clone with hooks, not operator: %v", err)
		}
		if len(f.servers)+len(f.volumes) != 0 || len(f.rec.calls) != 0 {
			t.Errorf("a refused clone did something: %v", f.rec.calls)
		}
	}
}
