package integration

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/workflows"
)

// backup runs an app-consistent backup of the demo workload.
func (e *labEnv) backup() *workflows.BackupResult {
	e.t.Helper()
	req := workflows.BackupRequest{Workload: "demo", Project: "demo", Repository: "main", Consistency: "app",
		Selector: cloud.Selector{Workload: "demo"}, FreezeTimeout: 20 * time.Second}
	wr, err := e.temporal.ExecuteWorkflow(e.ctx, client.StartWorkflowOptions{ID: workflows.BackupWorkflowID("", "demo"),
		TaskQueue: activities.ControlQueue}, workflows.WorkloadBackup, req)
	if err != nil {
		e.t.Fatal(err)
	}
	var res workflows.BackupResult
	if err := wr.Get(e.ctx, &res); err != nil {
		e.t.Fatal(err)
	}
	return &res
}

// restore runs a restore (or, with name, a clone) and returns its result or error.
func (e *labEnv) restore(id string, req workflows.RestoreRequest) (*workflows.RestoreResult, time.Duration, error) {
	start := time.Now()
	wr, err := e.temporal.ExecuteWorkflow(e.ctx, client.StartWorkflowOptions{ID: id, TaskQueue: activities.ControlQueue}, workflows.Restore, req)
	if err != nil {
		e.t.Fatal(err)
	}
	var res workflows.RestoreResult
	err = wr.Get(e.ctx, &res)
	return &res, time.Since(start), err
}

// rawHash is the sha256 of a disk image's content (qcow2 converted to raw).
func rawHash(t *testing.T, img string) string {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", img, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v\n%s", img, err, out)
	}
	defer os.Remove(raw)
	return fileSHA(t, raw)
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// backupHash restores a disk manifest into a raw file and hashes it.
func (e *labEnv) backupHash(manifest string, size int64) string {
	e.t.Helper()
	out := filepath.Join(e.t.TempDir(), "backup.raw")
	f, err := os.Create(out)
	if err != nil {
		e.t.Fatal(err)
	}
	f.Truncate(size)
	if _, err := mustRepo(e.t, e.be).RestoreDisk(e.ctx, manifest, f, repo.RestoreOptions{}); err != nil {
		e.t.Fatal(err)
	}
	f.Close()
	defer os.Remove(out)
	return fileSHA(e.t, out)
}

// guestCheck runs the in-guest record checker on every data disk of a guest.
func (e *labEnv) guestCheck(instance string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 2*time.Minute)
	defer cancel()
	var ag *guest.Client
	var err error
	for ctx.Err() == nil {
		if ag, err = e.agent(ctx, instance); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		e.t.Fatalf("agent of %s: %v", instance, err)
	}
	defer ag.Close()
	res, err := ag.Run(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", "guestapp check /data/*"}, Capture: true})
	if err != nil {
		e.t.Fatalf("in-guest check in %s: %v", instance, err)
	}
	if res.ExitCode != 0 {
		e.t.Errorf("in-guest check in %s: exit %d\n%s%s", instance, res.ExitCode, res.Stdout, res.Stderr)
	}
	return string(res.Stdout)
}

func (e *labEnv) serverByName(name string) lab.ServerInfo {
	e.t.Helper()
	for _, s := range e.lab.Servers() {
		if s.Name == name {
			return s
		}
	}
	e.t.Fatalf("no server %s in the lab", name)
	return lab.ServerInfo{}
}

func diskOf(t *testing.T, b *workflows.BackupResult, vm, prefix string) activities.CopyResult {
	t.Helper()
	for _, d := range b.Disks {
		if strings.HasPrefix(d.Manifest, b.BackupID+"/"+vm+"/"+prefix) {
			return d
		}
	}
	t.Fatalf("backup %s has no disk %s/%s*", b.BackupID, vm, prefix)
	return activities.CopyResult{}
}

// TestRestoreCloneAndRollbackOfLabWorkload restores the demo workload on
// libvirt compute hosts (two image-booted guests as libvirt domains, each
// with its root disk, an ephemeral disk and a volume; the host worker on
// --libvirt-uri) through the Restore and Clone workflows on a real
// Temporal server: an in-place rollback (volume, root and ephemeral disk
// hash equal to the backup), a staging clone into another project with a
// remapped network, post-restore hook and health check (the original
// keeps running), a cancelled restore (nothing left), a disaster restore
// of both servers (new guests boot from their restored root disks and the
// in-guest checker finds every record intact on all three disks), and a
// restore from a backup with a missing chunk (a clear error, nothing
// left).
func TestRestoreCloneAndRollbackOfLabWorkload(t *testing.T) {
	e := newLabEnvWith(t, labEnvOptions{Libvirt: true})
	ctx := e.ctx
	b := e.backup()
	t.Logf("backup %s: %d disks, %d MiB read", b.BackupID, len(b.Disks), b.BytesRead>>20)
	if len(b.Disks) != 6 {
		t.Fatalf("backup of 2 servers with 3 disks each: %d disks (%+v)", len(b.Disks), b.Disks)
	}
	for _, d := range b.Disks {
		if d.Size == 0 {
			t.Fatalf("disk %+v", d)
		}
	}
	dc, err := e.admin.ForProject(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	demoProject := dc.ProjectID()

	// 1. In-place rollback of demo-1, stopped first so that its disks can
	// be compared with the backup before its writer runs again.
	d1 := e.serverByName("demo-1")
	if err := e.admin.StopServer(ctx, d1.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.WaitServer(ctx, d1.ID, "SHUTOFF", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	vol := diskOf(t, b, "demo-1", "vol-")
	eph := diskOf(t, b, "demo-1", "disk0")
	root := diskOf(t, b, "demo-1", "root")
	volID := strings.TrimPrefix(strings.Split(vol.Manifest, "/")[2], "vol-")
	conn, err := e.admin.ConnectVolume(ctx, volID, "test")
	if err != nil {
		t.Fatal(err)
	}
	rootPath, ephPath := e.instanceFiles(t, d1.ID)
	wantVol, wantEph, wantRoot := e.backupHash(vol.Manifest, vol.Size), e.backupHash(eph.Manifest, eph.Size), e.backupHash(root.Manifest, root.Size)
	if rawHash(t, conn.Path) == wantVol {
		t.Fatal("the volume already equals the backup: the writer wrote nothing after it, the rollback test proves nothing")
	}
	if rawHash(t, rootPath) == wantRoot {
		t.Fatal("the root disk already equals the backup: the writer wrote nothing after it, the rollback test proves nothing")
	}
	res, took, err := e.restore("restore/inplace", workflows.RestoreRequest{Repository: "main", BackupID: b.BackupID, VMs: []string{"demo-1"}, InPlace: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := rawHash(t, conn.Path); got != wantVol {
		t.Errorf("volume after the in-place rollback: %s, backup %s", got, wantVol)
	}
	if got := rawHash(t, ephPath); got != wantEph {
		t.Errorf("ephemeral disk %s after the in-place rollback: %s, backup %s", ephPath, got, wantEph)
	}
	if got := rawHash(t, rootPath); got != wantRoot {
		t.Errorf("root disk %s after the in-place rollback: %s, backup %s", rootPath, got, wantRoot)
	}
	if s := e.serverByName("demo-1"); s.Status != "SHUTOFF" {
		t.Errorf("a server stopped before the rollback is %s after it", s.Status)
	}
	t.Logf("in-place rollback of demo-1 (3 disks, %d MiB) in %v: volume, root and ephemeral disk equal the backup", res.Bytes>>20, took.Round(time.Millisecond))
	if err := e.admin.StartServer(ctx, d1.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.WaitServer(ctx, d1.ID, "ACTIVE", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	d1 = e.serverByName("demo-1")
	checkAllDisks(t, "demo-1 after the rollback", "demo-1", e.guestCheck(e.serverByName("demo-1").InstanceRef.Name))

	// 1b. One volume restored to a new volume (no server).
	v2 := diskOf(t, b, "demo-2", "vol-")
	v2ID := strings.TrimPrefix(strings.Split(v2.Manifest, "/")[2], "vol-")
	res, took, err = e.restore("restore/one-volume", workflows.RestoreRequest{Repository: "main", BackupID: b.BackupID, Volumes: []string{v2ID}, NamePrefix: "copy-"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Volumes) != 1 || len(res.Servers) != 0 || res.Volumes[0].From != v2ID {
		t.Fatalf("one-volume restore: %+v", res)
	}
	nc, err := dc.ConnectVolume(ctx, res.Volumes[0].VolumeID, "test")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rawHash(t, nc.Path), e.backupHash(v2.Manifest, v2.Size); got != want {
		t.Errorf("volume restored to a new volume: %s, backup %s", got, want)
	}
	if v, err := dc.GetVolume(ctx, res.Volumes[0].VolumeID); err != nil || v.Name != "copy-demo-2-data" || v.Status != "available" {
		t.Errorf("new volume %+v %v", v, err)
	}
	t.Logf("volume %s restored to new volume %s in %v", v2ID, res.Volumes[0].VolumeID, took.Round(time.Millisecond))
	if err := dc.DeleteVolume(ctx, res.Volumes[0].VolumeID); err != nil {
		t.Fatal(err)
	}

	// 2. Staging clone of demo-1 into another project, network remapped,
	// a masking hook and a health check; the original keeps running.
	d2 := e.serverByName("demo-2")
	cw, err := e.temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.CloneWorkflowID("stg1"), TaskQueue: activities.ControlQueue},
		workflows.Clone, workflows.CloneRequest{Name: "stg1", RestoreRequest: workflows.RestoreRequest{Repository: "main", BackupID: b.BackupID,
			VMs: []string{"demo-1"}, Project: "staging", NamePrefix: "stg-", Networks: map[string]string{lab.Network: lab.Network2},
			PostHooks:   []activities.Hook{{Name: "mask", Path: "/bin/sh", Args: []string{"-c", "for d in /data/*; do echo masked > $d/MASKED; done; sync"}}},
			HealthCheck: &activities.Hook{Name: "health", Path: "/bin/sh", Args: []string{"-c", "guestapp check /data/* && cat /data/*/MASKED"}},
			Operator:    true}}) // the test is the operator: hooks are its to give
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var clone workflows.RestoreResult
	if err := cw.Get(ctx, &clone); err != nil {
		t.Fatal(err)
	}
	if len(clone.Servers) != 1 || len(clone.Hooks) != 2 || !strings.Contains(clone.Hooks[1].Output, "masked") {
		t.Fatalf("clone result %+v", clone)
	}
	cs, err := e.admin.ForProject(ctx, "staging")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := cs.GetServer(ctx, clone.Servers[0].ServerID)
	if err != nil {
		t.Fatal(err)
	}
	if srv.Name != "stg-demo-1" || srv.Metadata[activities.MetaClone] != "stg1" || srv.Metadata[cloud.WorkloadKey] != "" {
		t.Errorf("clone server %s metadata %v", srv.Name, srv.Metadata)
	}
	if _, ok := srv.Addresses[lab.Network2]; !ok || len(srv.Addresses) != 1 {
		t.Errorf("clone addresses %v, want only on %s", srv.Addresses, lab.Network2)
	}
	for _, name := range []string{"demo-1", "demo-2"} {
		if s := e.serverByName(name); s.Status != "ACTIVE" {
			t.Errorf("original %s is %s during the clone", name, s.Status)
		}
	}
	if e.serverByName("demo-2").ID != d2.ID {
		t.Error("demo-2 changed")
	}
	t.Logf("clone stg1 of demo-1 into staging in %v (hooks: %+v)", time.Since(start).Round(time.Millisecond), clone.Hooks)
	dw, err := e.temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "clone-delete/stg1", TaskQueue: activities.ControlQueue},
		workflows.CloneDelete, workflows.CloneDeleteRequest{Name: "stg1", Project: "staging"})
	if err != nil {
		t.Fatal(err)
	}
	var del workflows.CloneDeleteResult
	if err := dw.Get(ctx, &del); err != nil {
		t.Fatal(err)
	}
	if len(del.Servers) != 1 || len(del.Volumes) != 1 {
		t.Errorf("clone delete removed %+v", del)
	}
	if s, v, err := cs.FindByMetadata(ctx, activities.MetaClone, "stg1"); err != nil || len(s)+len(v) != 0 {
		t.Errorf("after clone delete: servers %v volumes %v (%v)", s, v, err)
	}
	e.guestCheck(e.serverByName("demo-1").InstanceRef.Name)

	// 3. Cancel a restore while it writes: nothing is left.
	cr, err := e.temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "restore/cancelled", TaskQueue: activities.ControlQueue},
		workflows.Restore, workflows.RestoreRequest{Repository: "main", BackupID: b.BackupID, NamePrefix: "cx-"})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		d, err := e.temporal.DescribeWorkflowExecution(ctx, cr.GetID(), cr.GetRunID())
		if err != nil {
			t.Fatal(err)
		}
		started := false
		for _, p := range d.PendingActivities {
			if p.GetActivityType().GetName() == "WriteDisk" {
				started = true
			}
		}
		if started {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the restore never started writing")
		}
	}
	if err := e.temporal.CancelWorkflow(ctx, cr.GetID(), cr.GetRunID()); err != nil {
		t.Fatal(err)
	}
	if err := cr.Get(ctx, nil); err == nil {
		t.Fatal("the cancelled restore succeeded")
	} else {
		var ce *temporal.CanceledError
		if !errors.As(err, &ce) {
			t.Errorf("cancelled restore: %v, want a cancellation", err)
		}
	}
	if s, v, err := dc.FindByMetadata(ctx, activities.MetaRestore, cr.GetID()); err != nil || len(s)+len(v) != 0 {
		t.Errorf("after the cancelled restore: servers %v volumes %v (%v)", s, v, err)
	}

	// 4. Disaster: both servers are deleted; the workload is restored.
	for _, name := range []string{"demo-1", "demo-2"} {
		if err := e.admin.DeleteServer(ctx, e.serverByName(name).ID); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(2 * time.Minute); len(e.lab.Servers()) > 0 && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
	}
	res, took, err = e.restore("restore/disaster", workflows.RestoreRequest{Repository: "main", BackupID: b.BackupID})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Servers) != 2 || len(res.Volumes) != 2 || len(res.Disks) != 6 || res.Project != demoProject {
		t.Fatalf("restore result %+v", res)
	}
	var captured cloud.Workload
	bk, err := mustRepo(t, e.be).LoadBackup(ctx, b.BackupID)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(bk.Source, &captured); err != nil {
		t.Fatal(err)
	}
	for _, rs := range res.Servers {
		m, err := e.admin.Capture(ctx, rs.ServerID)
		if err != nil {
			t.Fatal(err)
		}
		var orig cloud.ServerMeta
		for _, s := range captured.Servers {
			if s.ID == rs.From {
				orig = s
			}
		}
		if m.Name != orig.Name || m.Flavor.Name != orig.Flavor.Name || m.Metadata[cloud.WorkloadKey] != "demo" || m.Metadata[activities.MetaRestoredFrom] != orig.ID ||
			len(m.SecurityGroups) != len(orig.SecurityGroups) || m.SecurityGroups[0].Name != orig.SecurityGroups[0].Name || len(m.Volumes) != 1 || len(m.Ephemeral) != 1 || m.Root == nil {
			t.Errorf("restored server %s: %+v\ncaptured: %+v", rs.ServerID, m, orig)
		}
		if !slices.Equal(m.Tags, orig.Tags) {
			t.Errorf("restored server %s tags %v, captured %v", m.Name, m.Tags, orig.Tags)
		}
		out := e.guestCheck(rs.Instance)
		checkAllDisks(t, "restored "+m.Name, m.Name, out)
		t.Logf("restored %s (from %s): in-guest check:\n%s", m.Name, orig.ID, out)
	}
	var written int64
	for _, d := range res.Disks {
		written += d.Size
	}
	t.Logf("disaster restore of 2 VMs (6 disks, %d MiB of disk, %d MiB of chunk data fetched) in %v; data phases %.2fs (%.0f MiB/s of chunk data, %.0f MiB/s of disk)",
		written>>20, res.BytesFetched>>20, took.Round(time.Millisecond), res.WriteSeconds, float64(res.BytesFetched>>20)/res.WriteSeconds, float64(written>>20)/res.WriteSeconds)

	// 5. A missing chunk: the restore fails naming the backup, VM and disk,
	// and leaves nothing behind.
	vol2 := diskOf(t, b, "demo-2", "vol-")
	if err := removeOneChunk(e, vol2.Manifest); err != nil {
		t.Fatal(err)
	}
	_, _, err = e.restore("restore/broken", workflows.RestoreRequest{Repository: "main", BackupID: b.BackupID, VMs: []string{"demo-2"}, NamePrefix: "br-"})
	if err == nil || !strings.Contains(err.Error(), "backup "+b.BackupID+" vm demo-2 disk "+strings.Split(vol2.Manifest, "/")[2]) {
		t.Errorf("restore with a missing chunk: %v", err)
	} else {
		t.Logf("restore with a missing chunk: %v", err)
	}
	if s, v, err := dc.FindByMetadata(ctx, activities.MetaRestore, "restore/broken"); err != nil || len(s)+len(v) != 0 {
		t.Errorf("after the failed restore: servers %v volumes %v (%v)", s, v, err)
	}
}

// instanceFiles returns the files of a server's root disk (disk) and
// first ephemeral disk (disk.eph0) as its libvirt domain's definition names
// them.
func (e *labEnv) instanceFiles(t *testing.T, serverID string) (root, eph string) {
	t.Helper()
	dom, err := e.lv.Domain(e.ctx, serverID)
	if err != nil {
		t.Fatal(err)
	}
	disks, err := e.lv.Disks(e.ctx, dom)
	if err != nil {
		t.Fatal(err)
	}
	r, err := libvirt.ResolveDisk(disks, "disk")
	if err != nil {
		t.Fatal(err)
	}
	if r.Target != "vda" || r.Format != "qcow2" {
		t.Fatalf("root disk of server %s: %+v; want vda, a qcow2 overlay", serverID, r)
	}
	x, err := libvirt.ResolveDisk(disks, "disk.eph0")
	if err != nil {
		t.Fatal(err)
	}
	return r.File, x.File
}

// checkAllDisks fails the test unless the in-guest check's output of a
// demo server shows every record intact on its root disk, its ephemeral
// disk and its volume.
func checkAllDisks(t *testing.T, what, server, out string) {
	t.Helper()
	for _, dir := range []string{"/data/root/", "/data/ephemeral0/", "/data/" + server + "-data/"} {
		if !strings.Contains(out, "OK "+dir) {
			t.Errorf("%s: the in-guest check does not find %s intact:\n%s", what, dir, out)
		}
	}
}

// removeOneChunk deletes the object of the first data chunk of a disk
// manifest from the repository directory.
func removeOneChunk(e *labEnv, manifest string) error {
	r := mustRepo(e.t, e.be)
	m, err := r.LoadManifest(e.ctx, manifest)
	if err != nil {
		return err
	}
	var id string
	errStop := errors.New("stop")
	err = r.ForEachChunk(e.ctx, m, func(i int64, c repo.ChunkID) error {
		if c.IsHole() {
			return nil
		}
		id = c.String()
		return errStop
	})
	if err != nil && !errors.Is(err, errStop) {
		return err
	}
	if id == "" {
		return fmt.Errorf("disk %s has no data chunk", manifest)
	}
	var found string
	filepath.WalkDir(filepath.Join(e.repoDir, "chunks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(d.Name(), id) {
			found = p
		}
		return nil
	})
	if found == "" {
		return fmt.Errorf("chunk %s of %s not found under the repository", id, manifest)
	}
	return os.Remove(found)
}
