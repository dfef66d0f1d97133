package integration

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/internal/guest"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/host/libvirt/libvirttest"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/workflows"
)

// TestWorkloadBackupOnLibvirt is the workload backup on libvirt compute
// hosts, as on Nova: the lab's servers are libvirt domains (instance-%08x,
// UUID = server id), discovery gives libvirt: locators, and the host worker
// reaches guests only through libvirtd (agent pass-through, checkpoints,
// pull-mode exports). Two app-consistent backups of the demo workload (two
// image-booted guests, each with its root disk, an ephemeral disk and a
// volume, the in-guest writer running on all three):
// the first reads every disk in full and says why, the second reads each
// disk incrementally and little of it; every restored disk is fsck-clean
// with the writer's records intact; a hard reboot through Nova keeps the
// chain, a SIGKILL of QEMU makes the next read full with the reason, a
// resize makes the grown root disk's next read full with the reason; no
// checkpoint metadata or job stays on any domain, no guest stays frozen,
// and a server can be deleted through Nova's API afterwards (its domain
// undefined).
func TestWorkloadBackupOnLibvirt(t *testing.T) {
	e := newLabEnvWith(t, labEnvOptions{Libvirt: true})
	ctx, dir, be := e.ctx, e.dir, e.be
	run := func() *workflows.BackupResult {
		t.Helper()
		start := time.Now()
		res := e.backup()
		t.Logf("backup %s (%s) in %v: %d VMs, %d disks, read %d KiB, new %d KiB; freeze windows %v",
			res.BackupID, res.Consistency, time.Since(start).Round(time.Millisecond), res.VMs, len(res.Disks),
			res.BytesRead>>10, res.BytesNew>>10, res.FreezeWindows)
		e.assertClean(t)
		return res
	}
	first := run()
	if first.Consistency != "app" || first.VMs != 2 || len(first.Disks) != 6 {
		t.Fatalf("first backup: %+v", first)
	}
	for _, vm := range []string{"demo-1", "demo-2"} {
		for _, disk := range []string{"root", "disk0", "vol-"} {
			diskOf(t, first, vm, disk)
		}
	}
	r := mustRepo(t, be)
	for _, d := range first.Disks {
		m, err := r.LoadManifest(ctx, d.Manifest)
		if err != nil {
			t.Fatal(err)
		}
		if d.Incremental || m.Checkpoint == nil || m.Checkpoint.Kind != libvirt.CheckpointKind || m.Checkpoint.Mode != "full" || !strings.Contains(m.Checkpoint.Reason, "no base") {
			t.Fatalf("first backup, %s: incremental %v, checkpoint kind %q mode %q (%s); want a full read of a libvirt checkpoint saying why", d.Manifest, d.Incremental, ckKind(m.Checkpoint), ckMode(m.Checkpoint), ckReason(m.Checkpoint))
		}
	}
	time.Sleep(3 * time.Second) // the writers go on
	second := run()
	var size int64
	r = mustRepo(t, be)
	for _, d := range second.Disks {
		m, err := r.LoadManifest(ctx, d.Manifest)
		if err != nil {
			t.Fatal(err)
		}
		if !d.Incremental || m.Checkpoint == nil || m.Checkpoint.Mode != "incremental" {
			t.Errorf("second backup, %s: incremental %v, checkpoint mode %+v", d.Manifest, d.Incremental, m.Checkpoint != nil && m.Checkpoint.Mode == "incremental")
		}
		size += d.Size
	}
	if second.BytesRead*20 > size {
		t.Errorf("the incremental read %d of %d bytes: more than 5%%", second.BytesRead, size)
	}
	e.assertThawed(t)
	for _, d := range second.Disks {
		st, files := restoreAndCheck(ctx, t, r, d.Manifest, d.Size, filepath.Join(dir, "restored.raw"))
		t.Logf("restored %s: %d MiB in %.1fs; %d record files intact", d.Manifest, st.BytesWritten>>20, st.Seconds, files)
	}

	// demo-1 hard-rebooted through Nova's API (its domain destroyed,
	// undefined and defined again): its bitmaps validate and its disks stay
	// incremental. demo-2's QEMU SIGKILLed, then stopped and started: its
	// bitmaps were not stored, so its disks are read in full, with the
	// reason.
	servers := map[string]string{}
	for _, s := range e.lab.Servers() {
		servers[s.Name] = s.ID
	}
	if err := e.admin.RebootServer(ctx, servers["demo-1"], true); err != nil {
		t.Fatal(err)
	}
	e.lab.Wait()
	if err := e.admin.WaitServer(ctx, servers["demo-1"], "ACTIVE", 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	e.killQEMU(t, servers["demo-2"])
	if err := e.admin.StopServer(ctx, servers["demo-2"]); err != nil {
		t.Fatal(err)
	}
	e.lab.Wait()
	if err := e.admin.StartServer(ctx, servers["demo-2"]); err != nil {
		t.Fatal(err)
	}
	e.lab.Wait()
	third := run()
	r = mustRepo(t, be)
	for _, d := range third.Disks {
		m, err := r.LoadManifest(ctx, d.Manifest)
		if err != nil {
			t.Fatal(err)
		}
		vm := strings.Split(d.Manifest, "/")[1]
		// (CopyResult.Incremental says the disk had a base manifest, which a
		// full read still dedups against; the mode says how it was read.)
		switch {
		case vm == "demo-1" && (!d.Incremental || m.Checkpoint.Mode != "incremental"):
			t.Errorf("after a hard reboot, %s: mode %q (%s); want incremental", d.Manifest, m.Checkpoint.Mode, m.Checkpoint.Reason)
		case vm == "demo-2" && (m.Checkpoint.Mode != "full" || !strings.Contains(m.Checkpoint.Reason, "does not validate")):
			t.Errorf("after SIGKILL of QEMU, %s: mode %q (%s); want full because the base does not validate", d.Manifest, m.Checkpoint.Mode, m.Checkpoint.Reason)
		}
		t.Logf("third backup, %s: %s %s", d.Manifest, m.Checkpoint.Mode, m.Checkpoint.Reason)
		st, files := restoreAndCheck(ctx, t, r, d.Manifest, d.Size, filepath.Join(dir, "restored.raw"))
		t.Logf("restored %s: %d MiB; %d record files intact", d.Manifest, st.BytesWritten>>20, files)
	}

	// demo-1 resized through Nova's API to a flavor with a bigger root
	// disk and a swap disk: the root disk's bitmaps validate but know
	// nothing of the new area, so it is read in full, saying why; the new
	// swap disk is read in full as a new disk; its other disks and
	// demo-2's stay incremental.
	if err := e.admin.ResizeServer(ctx, servers["demo-1"], "4"); err != nil {
		t.Fatal(err)
	}
	e.lab.Wait()
	if err := e.admin.WaitServer(ctx, servers["demo-1"], "VERIFY_RESIZE", 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.ConfirmResize(ctx, servers["demo-1"]); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.WaitServer(ctx, servers["demo-1"], "ACTIVE", time.Minute); err != nil {
		t.Fatal(err)
	}
	fourth := run()
	if len(fourth.Disks) != 7 {
		t.Fatalf("fourth backup: %d disks, want 7 (demo-1's new swap disk)", len(fourth.Disks))
	}
	r = mustRepo(t, be)
	for _, d := range fourth.Disks {
		m, err := r.LoadManifest(ctx, d.Manifest)
		if err != nil {
			t.Fatal(err)
		}
		resized := strings.HasPrefix(d.Manifest, fourth.BackupID+"/demo-1/root")
		swap := strings.HasPrefix(d.Manifest, fourth.BackupID+"/demo-1/swap")
		switch {
		case resized && (m.Checkpoint.Mode != "full" || !strings.Contains(m.Checkpoint.Reason, "resized") || m.Size != 2<<30):
			t.Errorf("after a resize, %s: %d bytes, mode %q (%s); want 2 GiB read in full because it was resized", d.Manifest, m.Size, m.Checkpoint.Mode, m.Checkpoint.Reason)
		case swap && (m.Checkpoint.Mode != "full" || !strings.Contains(m.Checkpoint.Reason, "new disk") || m.Size != 64<<20):
			t.Errorf("the new swap disk, %s: %d bytes, mode %q (%s); want 64 MiB read in full as a new disk", d.Manifest, m.Size, m.Checkpoint.Mode, m.Checkpoint.Reason)
		case !resized && !swap && m.Checkpoint.Mode != "incremental":
			t.Errorf("fourth backup, %s: mode %q (%s); want incremental", d.Manifest, m.Checkpoint.Mode, m.Checkpoint.Reason)
		}
		if resized {
			st, files := restoreAndCheck(ctx, t, r, d.Manifest, d.Size, filepath.Join(dir, "restored.raw"))
			t.Logf("restored resized %s: %d MiB; %d record files intact", d.Manifest, st.BytesWritten>>20, files)
		}
	}
	for _, d := range run().Disks {
		if !d.Incremental {
			t.Errorf("fifth backup, %s: read in full", d.Manifest)
		}
	}
	e.assertThawed(t)

	// Nova's delete undefines the domain: nothing of Raksha's is in the way.
	s := e.lab.Servers()[0]
	if err := e.admin.DeleteServer(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	e.lab.Wait()
	if _, err := e.lv.Domain(ctx, s.ID); err == nil {
		t.Fatalf("domain of deleted server %s is still defined", s.ID)
	}
}

func ckKind(c *repo.Checkpoint) string {
	if c == nil {
		return ""
	}
	return c.Kind
}

func ckMode(c *repo.Checkpoint) string {
	if c == nil {
		return ""
	}
	return c.Mode
}

func ckReason(c *repo.Checkpoint) string {
	if c == nil {
		return ""
	}
	return c.Reason
}

// killQEMU SIGKILLs the QEMU process of the server's domain.
func (d *labDemo) killQEMU(t *testing.T, serverID string) {
	t.Helper()
	dom, err := d.lv.Domain(context.Background(), serverID)
	if err != nil {
		t.Fatal(err)
	}
	libvirttest.KillQEMU(t, d.lv, dom)
}

// assertClean fails the test if a domain of the lab has checkpoint
// metadata or a job.
func (d *labDemo) assertClean(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, s := range d.lab.Servers() {
		dom, err := d.lv.Domain(ctx, s.ID)
		if err != nil {
			t.Fatal(err)
		}
		if names, err := d.lv.CheckpointNames(ctx, dom); err != nil || len(names) > 0 {
			t.Errorf("domain %s: checkpoint metadata %v, %v", dom.Name, names, err)
		}
		if active, err := d.lv.JobActive(ctx, dom); err != nil || active {
			t.Errorf("domain %s: job active %v, %v", dom.Name, active, err)
		}
	}
}

// TestRestoreOnLibvirt restores onto libvirt hosts: an in-place rollback of
// a stopped server (its volume, and its root and ephemeral disks, the
// files the domain's definition names, equal the backup byte for byte as
// the guest sees them), and a disaster restore of the other one as a new
// server, made from the captured image and flavor, whose root, ephemeral
// and volume disks are written from the backup: it boots from its
// restored root disk and its in-guest checker finds every record intact
// on all three.
func TestRestoreOnLibvirt(t *testing.T) {
	e := newLabEnvWith(t, labEnvOptions{Libvirt: true})
	ctx := e.ctx
	b := e.backup()
	d1 := e.serverByName("demo-1")
	if err := e.admin.StopServer(ctx, d1.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.WaitServer(ctx, d1.ID, "SHUTOFF", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	vol, eph, root := diskOf(t, b, "demo-1", "vol-"), diskOf(t, b, "demo-1", "disk0"), diskOf(t, b, "demo-1", "root")
	volID := strings.TrimPrefix(strings.Split(vol.Manifest, "/")[2], "vol-")
	conn, err := e.admin.ConnectVolume(ctx, volID, "test")
	if err != nil {
		t.Fatal(err)
	}
	dom, err := e.lv.Domain(ctx, d1.ID)
	if err != nil {
		t.Fatal(err)
	}
	disks, err := e.lv.Disks(ctx, dom)
	if err != nil {
		t.Fatal(err)
	}
	ephDisk, err := libvirt.ResolveDisk(disks, "disk.eph0")
	if err != nil {
		t.Fatal(err)
	}
	rootDisk, err := libvirt.ResolveDisk(disks, "disk")
	if err != nil {
		t.Fatal(err)
	}
	if rootDisk.Target != "vda" || rootDisk.Format != "qcow2" {
		t.Fatalf("root disk of demo-1: %+v; want vda, a qcow2 overlay", rootDisk)
	}
	wantVol, wantEph, wantRoot := e.backupHash(vol.Manifest, vol.Size), e.backupHash(eph.Manifest, eph.Size), e.backupHash(root.Manifest, root.Size)
	if rawHash(t, conn.Path) == wantVol {
		t.Fatal("the volume already equals the backup: the rollback would prove nothing")
	}
	if rawHash(t, rootDisk.File) == wantRoot {
		t.Fatal("the root disk already equals the backup: the rollback would prove nothing")
	}
	res, took, err := e.restore("restore/inplace", workflows.RestoreRequest{Repository: "main", BackupID: b.BackupID, VMs: []string{"demo-1"}, InPlace: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := rawHash(t, conn.Path); got != wantVol {
		t.Errorf("volume after the in-place rollback: %s, backup %s", got, wantVol)
	}
	if got := rawHash(t, ephDisk.File); got != wantEph {
		t.Errorf("ephemeral disk %s after the in-place rollback: %s, backup %s", ephDisk.File, got, wantEph)
	}
	if got := rawHash(t, rootDisk.File); got != wantRoot {
		t.Errorf("root disk %s after the in-place rollback: %s, backup %s", rootDisk.File, got, wantRoot)
	}
	t.Logf("in-place rollback of demo-1 on libvirt (%d MiB) in %v: volume, root and ephemeral disk equal the backup", res.Bytes>>20, took.Round(time.Millisecond))

	if err := e.admin.DeleteServer(ctx, e.serverByName("demo-2").ID); err != nil {
		t.Fatal(err)
	}
	e.lab.Wait()
	res, took, err = e.restore("restore/disaster", workflows.RestoreRequest{Repository: "main", BackupID: b.BackupID, VMs: []string{"demo-2"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Servers) != 1 || len(res.Disks) != 3 {
		t.Fatalf("restore result %+v", res)
	}
	out := e.guestCheck(res.Servers[0].Instance)
	if !strings.Contains(out, "OK /data/demo-2-data/") || !strings.Contains(out, "OK /data/ephemeral0/") || !strings.Contains(out, "OK /data/root/") {
		listing := ""
		if ag, err := e.agent(ctx, res.Servers[0].Instance); err == nil {
			r, _ := ag.Run(ctx, guest.ExecRequest{Path: "/bin/sh", Args: []string{"-c", "cat /proc/mounts; ls -laR /data"}, Capture: true})
			ag.Close()
			listing = string(r.Stdout) + string(r.Stderr)
		}
		t.Errorf("in-guest check of the restored server does not cover the three restored disks:\n%s\nguest:\n%s", out, listing)
	}
	t.Logf("demo-2 restored as a new server on libvirt in %v; in-guest check:\n%s", took.Round(time.Millisecond), out)
	e.assertClean(t)
}
