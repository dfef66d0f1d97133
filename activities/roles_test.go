package activities

import (
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/testsuite"
)

// recordingRegistry records what a role registers (worker.ActivityRegistry).
type recordingRegistry struct{ names []string }

func (r *recordingRegistry) RegisterActivity(a any) { panic("RegisterRole must register by name") }
func (r *recordingRegistry) RegisterActivityWithOptions(a any, o activity.RegisterOptions) {
	r.names = append(r.names, o.Name)
}
func (r *recordingRegistry) RegisterDynamicActivity(a any, o activity.DynamicRegisterOptions) {
	panic("RegisterRole must not register a dynamic activity")
}

func registered(t *testing.T, role string) []string {
	t.Helper()
	rec := &recordingRegistry{}
	names := RegisterRole(rec, New(Config{}), role)
	if !slices.Equal(names, rec.names) {
		t.Fatalf("role %s: RegisterRole returned %v, registered %v", role, names, rec.names)
	}
	return rec.names
}

// TestRoleRegistration lists what each role's worker registers and fails
// if an activity that acts in a guest or on the host's files is on the
// control or data queue, or a control activity on a host or data queue.
func TestRoleRegistration(t *testing.T) {
	roles := map[string][]string{}
	for _, role := range []string{RoleControl, RoleData, RoleHost} {
		roles[role] = registered(t, role)
		t.Logf("%s: %s", role, strings.Join(roles[role], " "))
	}
	hostOnly := []string{"Freeze", "Thaw", "RunHooks", "GuestRun", "Checkpoint", "FinishCheckpoint"}
	controlOnly := []string{"Begin", "Commit", "Abort", "Prune", "PruneExpired", "CollectGarbage", "VerifyRepository",
		"AcquirePermits", "ClosedRuns", "PlanRestore", "CreateRestoreVolume", "ConnectVolume", "CreateRestoreServer",
		"PowerServer", "DeleteRestoreServer", "DeleteRestoreVolume", "FindByLabel"}
	for _, n := range hostOnly {
		for _, role := range []string{RoleControl, RoleData} {
			if slices.Contains(roles[role], n) {
				t.Errorf("host-only activity %s is registered by the %s role", n, role)
			}
		}
		if !slices.Contains(roles[RoleHost], n) {
			t.Errorf("host activity %s is not registered by the host role", n)
		}
	}
	for _, n := range controlOnly {
		for _, role := range []string{RoleData, RoleHost} {
			if slices.Contains(roles[role], n) {
				t.Errorf("control activity %s is registered by the %s role", n, role)
			}
		}
		if !slices.Contains(roles[RoleControl], n) {
			t.Errorf("control activity %s is not registered by the control role", n)
		}
	}
	// Disk reads and writes: never on the control queue.
	for _, n := range []string{"CopyDisk", "WriteDisk", "SnapshotRBD", "FinishRBD"} {
		if slices.Contains(roles[RoleControl], n) {
			t.Errorf("disk activity %s is registered by the control role", n)
		}
	}
	// Every exported method of Activities is an activity some role serves
	// (a new one must be given a role, or it is never run).
	var all []string
	for _, r := range roles {
		all = append(all, r...)
	}
	typ := reflect.TypeOf(&Activities{})
	var missing []string
	for i := 0; i < typ.NumMethod(); i++ {
		if m := typ.Method(i); !slices.Contains(all, m.Name) {
			missing = append(missing, m.Name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("activities registered by no role: %v", missing)
	}
	if RoleActivities(New(Config{}), "admin") != nil {
		t.Error("an unknown role has activities")
	}
}

// TestDataRoleRefusesHostWork runs the data role's CopyDisk and WriteDisk,
// as registered, with a host's disk and an instance's file: both refused
// naming the disk and the queue; a host activity is not there at all.
func TestDataRoleRefusesHostWork(t *testing.T) {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	RegisterRole(env, New(Config{}), RoleData)
	_, err := env.ExecuteActivity("CopyDisk", CopyInput{BackupID: "b1", Disk: Disk{Name: "root", Locator: "qemu:h1/instance-1/root"}})
	if err == nil || !strings.Contains(err.Error(), "qemu:h1/instance-1/root") || !strings.Contains(err.Error(), DataQueue) {
		t.Errorf("data role's CopyDisk of a qemu: disk: %v", err)
	}
	_, err = env.ExecuteActivity("WriteDisk", WriteDiskInput{Manifest: "b1/vm/root", Target: WriteTarget{Kind: "instance-disk", Instance: "i-1", File: "disk"}})
	if err == nil || !strings.Contains(err.Error(), "instance i-1 disk disk") || !strings.Contains(err.Error(), DataQueue) {
		t.Errorf("data role's WriteDisk into an instance's disk: %v", err)
	}
	_, err = env.ExecuteActivity("GuestRun", GuestRunInput{Instance: "i-1", Hook: Hook{Path: "/bin/true"}})
	if err == nil || !strings.Contains(err.Error(), "GuestRun") {
		t.Errorf("GuestRun on the data role: %v, want not registered", err)
	}
}
