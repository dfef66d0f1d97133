//go:build openstack && ceph

package integration

import (
	"bufio"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
	"github.com/raksha-backup/raksha/workflows"
)

// The acceptance tests (build tags openstack and ceph) run Raksha against
// the real OpenStack of scripts/openstack-up.sh: RAKSHA_OPENSTACK_CLOUDS
// names its clouds.yaml; the env file beside it gives CEPH_CONF. Run:
//
//	make openstack-up
//	RAKSHA_OPENSTACK_CLOUDS=$OPENSTACK_DIR/clouds.yaml go test -tags openstack,ceph,pacific \
//	  -count=1 -run TestOpenStack -v ./integration/
//
// This is the first of them (issue 14): an app-consistent backup and an
// incremental of two image-booted servers with an RBD volume each; the
// scenarios on a Heat stack are in acceptance_test.go (make acceptance).
// After this test's cleanup the two volumes are gone from Cinder, but their
// RBD images stay in the pool's trash, held there by the snapshot Raksha
// keeps for the next diff, until a later backup that reads that pool
// releases them (rbd.Conn.ReleaseTrashed; TestAcceptance's
// DeletedVolumeLeavesNothing).

// openstackEnv reads the clouds.yaml path and the env file of
// scripts/openstack-up.sh.
func openstackEnv(t *testing.T) (clouds string, env map[string]string) {
	t.Helper()
	clouds = os.Getenv("RAKSHA_OPENSTACK_CLOUDS")
	if clouds == "" {
		t.Fatal("RAKSHA_OPENSTACK_CLOUDS is not set: bring the cloud up with make openstack-up and name its clouds.yaml")
	}
	f, err := os.Open(filepath.Join(filepath.Dir(clouds), "env"))
	if err != nil {
		t.Fatalf("the env file of scripts/openstack-up.sh: %v", err)
	}
	defer f.Close()
	env = map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	return clouds, env
}

// TestOpenStackBackupAndIncremental backs up a workload of two servers
// booted from the lab guest image (qemu-ga and the in-guest writer on the
// root disk) with a Cinder RBD volume each, through a Temporal dev server
// and in-process control, host (libvirt, qemu:///system) and data workers:
// an app-consistent backup, then an incremental one (libvirt checkpoints for
// the root disks, RBD snapshot diffs for the volumes); the restored root
// disks' file systems are clean and the writer's records intact.
func TestOpenStackBackupAndIncremental(t *testing.T) {
	clouds, env := openstackEnv(t)
	ctx := context.Background()
	admin, err := cloud.Connect(ctx, cloud.Config{Cloud: "prod-admin", CloudsFile: clouds, HostDriver: "libvirt",
		PollInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const workload = "acceptance"
	wl := map[string]string{cloud.WorkloadKey: workload}

	// The workload: two servers and a volume each, deleted at the end.
	start := time.Now()
	var serverIDs []string
	for _, name := range []string{"acc-1", "acc-2"} {
		id, err := admin.CreateServer(ctx, &cloud.ServerMeta{Name: name, Metadata: wl, Flavor: cloud.FlavorMeta{ID: "1"},
			Image: &cloud.ImageMeta{Name: lab.GuestImage}}, nil, cloud.Remap{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := admin.DeleteServer(ctx, id); err == nil {
				_ = admin.WaitServerGone(ctx, id, 3*time.Minute)
			}
		})
		serverIDs = append(serverIDs, id)
	}
	for i, id := range serverIDs {
		vol, err := admin.CreateVolume(ctx, cloud.VolumeOpts{Name: "acc-data-" + string(rune('1'+i)), SizeGB: 1, Metadata: wl})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := admin.RemoveVolume(ctx, vol, 3*time.Minute); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		})
		if err := admin.WaitServer(ctx, id, "ACTIVE", 5*time.Minute); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.WaitVolume(ctx, vol, "available", 3*time.Minute); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.AttachVolume(ctx, id, vol); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.WaitVolume(ctx, vol, "in-use", 3*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	w, err := admin.DiscoverWorkload(ctx, workload, cloud.Selector{Workload: workload})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Servers) != 2 {
		t.Fatalf("discovered %d servers", len(w.Servers))
	}
	host := w.Servers[0].Host
	t.Logf("workload of 2 servers with a volume each on host %s in %v", host, time.Since(start).Round(time.Second))

	// Temporal, the repository and the workers.
	tc, _ := startTemporal(t)
	dir := t.TempDir()
	repoDir, pwFile := filepath.Join(dir, "repo"), filepath.Join(dir, "repo-pw")
	if err := os.WriteFile(pwFile, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	be, err := local.Open(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Init(ctx, be, repo.InitOptions{Password: "secret"}, repo.Options{}); err != nil {
		t.Fatal(err)
	}
	// The guests answer their agent some seconds after ACTIVE (the
	// in-guest writer's first records are durable by then).
	lvc := libvirttest.Conn(t)
	for _, id := range serverIDs {
		actx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		dom, err := lvc.Domain(actx, id)
		if err == nil {
			err = libvirt.WaitAgent(actx, lvc, dom)
		}
		cancel()
		if err != nil {
			t.Fatalf("the guest agent of server %s: %v", id, err)
		}
	}
	t.Logf("both guests' agents answer %v after the servers were created", time.Since(start).Round(time.Second))
	acts := activities.New(activities.Config{
		Repos:      map[string]activities.RepoConfig{"main": {URL: "file://" + repoDir, PasswordFile: pwFile}},
		WorkDir:    filepath.Join(dir, "work"),
		Log:        slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Discoverer: &activities.CloudDiscoverer{Client: admin}, CephConf: env["CEPH_CONF"],
		Libvirt: lvc, LockDir: filepath.Join(dir, "locks"),
	})
	t.Cleanup(func() { activities.Shutdown(context.Background(), acts) })
	startWorkers(t, tc, acts, activities.ControlQueue, activities.HostQueue(host), activities.DataQueue)

	backup := func() *workflows.BackupResult {
		t.Helper()
		return runOpenStackBackup(ctx, t, tc, "", workflows.BackupRequest{Workload: workload, Project: "prod", Repository: "main",
			Consistency: "app", Selector: cloud.Selector{Workload: workload}, FreezeTimeout: 30 * time.Second})
	}
	first := backup()
	if first.Consistency != "app" || first.VMs != 2 || len(first.Disks) != 4 {
		t.Fatalf("first backup: %+v", first)
	}
	time.Sleep(5 * time.Second) // the writers go on
	second := backup()
	if len(second.Disks) != 4 {
		t.Fatalf("second backup: %+v", second)
	}
	var size int64
	for _, d := range second.Disks {
		if !d.Incremental {
			t.Errorf("second backup, %s: not incremental", d.Manifest)
		}
		size += d.Size
	}
	if second.BytesRead*10 > size {
		t.Errorf("the incremental read %d of %d bytes: more than 10%%", second.BytesRead, size)
	}
	r := mustRepo(t, be)
	for _, vm := range []string{"acc-1", "acc-2"} {
		d := diskOf(t, second, vm, "root")
		st, files := restoreAndCheck(ctx, t, r, d.Manifest, d.Size, filepath.Join(dir, "restored.raw"))
		t.Logf("restored %s: %d MiB in %.1fs; %d record files intact", d.Manifest, st.BytesWritten>>20, st.Seconds, files)
	}
}

// runOpenStackBackup runs one WorkloadBackup through the dev server and
// the test's workers and logs its figures (what names it in the log).
func runOpenStackBackup(ctx context.Context, t *testing.T, tc client.Client, what string, req workflows.BackupRequest) *workflows.BackupResult {
	t.Helper()
	start := time.Now()
	wr, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.BackupWorkflowID(req.Project, req.Workload),
		TaskQueue: activities.ControlQueue}, workflows.WorkloadBackup, req)
	if err != nil {
		t.Fatal(err)
	}
	var res workflows.BackupResult
	if err := wr.Get(ctx, &res); err != nil {
		t.Fatal(err)
	}
	if what != "" {
		what += " "
	}
	t.Logf("%sbackup %s (%s) in %v: %d VMs, %d disks, read %d KiB, new %d KiB; freeze windows %v; warnings %q",
		what, res.BackupID, res.Consistency, time.Since(start).Round(time.Millisecond), res.VMs, len(res.Disks),
		res.BytesRead>>10, res.BytesNew>>10, res.FreezeWindows, res.Warnings)
	return &res
}
