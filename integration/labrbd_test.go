//go:build ceph

package integration

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/cloud"
	"github.com/raksha-backup/raksha/internal/disk/rbd"
	"github.com/raksha-backup/raksha/internal/host/libvirt"
	"github.com/raksha-backup/raksha/internal/lab"
	"github.com/raksha-backup/raksha/internal/lab/demo"
	"github.com/raksha-backup/raksha/internal/lab/guestapp"
	"github.com/raksha-backup/raksha/internal/lab/labtest"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/testenv/cephlab"
	"github.com/raksha-backup/raksha/workflows"
)

// rbdCLI runs the rbd command against the test cluster.
func rbdCLI(t *testing.T, conf string, args ...string) string {
	t.Helper()
	out, err := exec.Command("rbd", append([]string{"--conf", conf}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("rbd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// rbdHash is the sha256 of an RBD image or snapshot's content (rbd export).
func rbdHash(t *testing.T, conf, spec string) string {
	t.Helper()
	cmd := exec.Command("rbd", "--conf", conf, "export", "--no-progress", spec, "-")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	_, cerr := io.Copy(h, out)
	if err := cmd.Wait(); err != nil || cerr != nil {
		t.Fatalf("rbd export %s: %v %v", spec, err, cerr)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// labClouds makes the demo's users in a lab and writes their clouds.yaml.
func labClouds(t *testing.T, l *lab.Lab) string {
	t.Helper()
	for _, u := range []struct{ user, project, role string }{{lab.AdminUser, lab.AdminProject, "admin"}, {demo.DemoUser, "demo", "member"}, {lab.AdminUser, "demo", "admin"}} {
		if _, err := l.EnsureProject(u.project); err != nil {
			t.Fatal(err)
		}
		if _, err := l.EnsureUser(u.user, "pw-"+u.user, u.project, u.role); err != nil {
			t.Fatal(err)
		}
	}
	clouds := filepath.Join(t.TempDir(), "clouds.yaml")
	if err := demo.WriteClouds(clouds, l.AuthURL(), "pw-"+lab.AdminUser, "pw-"+demo.DemoUser); err != nil {
		t.Fatal(err)
	}
	return clouds
}

// TestLabCinderOnRBD checks the lab's Cinder on RBD through its API,
// without guests: volumes are RBD images (formatted, blank, copies of
// snapshots into RBD and into qcow2), Cinder snapshots RBD snapshots,
// os-initialize_connection answers "rbd", and discovery gives an attached
// RBD volume an rbd: locator (from Cinder's attachment record) while the
// ephemeral disk stays qemu:.
func TestLabCinderOnRBD(t *testing.T) {
	cl := cephlab.Require(t)
	ctx := context.Background()
	l := labtest.StartWith(t, lab.Options{RBD: &lab.RBDConfig{CephConf: cl.CephConf}, FormatDisks: true, Hosts: []string{"h1"}})
	clouds := labClouds(t, l)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := demo.Ensure(ctx, clouds, quiet); err != nil {
		t.Fatal(err)
	}
	admin, err := cloud.Connect(ctx, cloud.Config{Cloud: demo.AdminCloud, CloudsFile: clouds, PollInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	dc, err := admin.ForProject(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}

	// Discovery: the demo's volumes are RBD images.
	w, err := dc.DiscoverWorkload(ctx, "demo", cloud.Selector{Workload: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Servers) != 2 {
		t.Fatalf("demo workload: %d servers", len(w.Servers))
	}
	for _, s := range w.Servers {
		if len(s.Volumes) != 1 || len(s.Ephemeral) != 1 {
			t.Fatalf("server %s: volumes %+v, ephemeral %+v", s.Name, s.Volumes, s.Ephemeral)
		}
		v := s.Volumes[0]
		if got, want := v.Locator.String(), "rbd:rbd/volume-"+v.ID; got != want || v.Type != lab.VolumeTypeRBD {
			t.Errorf("volume %s of %s: locator %q, type %q; want %q, %s", v.ID, s.Name, got, v.Type, want, lab.VolumeTypeRBD)
		}
		if e := s.Ephemeral[0].Locator; e.Scheme != "qemu" {
			t.Errorf("ephemeral disk of %s: locator %q, want qemu:", s.Name, e.String())
		}
		// The image holds the ext4 file system the guest mounts.
		if out := rbdCLI(t, cl.CephConf, "info", "rbd/volume-"+v.ID); !strings.Contains(out, "size 1 GiB") {
			t.Errorf("rbd info of volume %s: %s", v.ID, out)
		}
		c, err := admin.ConnectVolume(ctx, v.ID, "h1")
		if err != nil || c.Type != "rbd" || c.Pool != "rbd" || c.Image != "volume-"+v.ID {
			t.Errorf("connection of %s: %+v, %v", v.ID, c, err)
		}
	}
	volID := w.Servers[0].Volumes[0].ID

	// A Cinder snapshot of the in-use volume is an RBD snapshot.
	snapID, err := dc.CreateSnapshot(ctx, volID, cloud.SnapshotOpts{Name: "s1", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dc.WaitSnapshot(ctx, snapID, time.Minute); err != nil {
		t.Fatal(err)
	}
	if out := rbdCLI(t, cl.CephConf, "snap", "ls", "rbd/volume-"+volID); !strings.Contains(out, "snapshot-"+snapID) {
		t.Fatalf("rbd snap ls after a Cinder snapshot: %s", out)
	}
	snapHash := rbdHash(t, cl.CephConf, "rbd/volume-"+volID+"@snapshot-"+snapID)

	// Volumes from the snapshot: an RBD image (grown to 2 GiB) and a qcow2
	// file; both hold the snapshot's bytes.
	fromRBD, err := dc.CreateVolume(ctx, cloud.VolumeOpts{Name: "from-snap", SizeGB: 2, SnapshotID: snapID})
	if err != nil {
		t.Fatal(err)
	}
	fromQcow, err := dc.CreateVolume(ctx, cloud.VolumeOpts{Name: "from-snap-qcow2", SizeGB: 1, SnapshotID: snapID, Type: lab.VolumeType})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{fromRBD, fromQcow} {
		if _, err := dc.WaitVolume(ctx, id, "available", time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if out := rbdCLI(t, cl.CephConf, "info", "rbd/volume-"+fromRBD); !strings.Contains(out, "size 2 GiB") {
		t.Errorf("rbd info of the volume from the snapshot: %s", out)
	}
	// The first GiB equals the snapshot.
	head := filepath.Join(t.TempDir(), "head.raw")
	rbdCLI(t, cl.CephConf, "export", "--no-progress", "rbd/volume-"+fromRBD, head)
	if err := exec.Command("truncate", "-s", "1G", head).Run(); err != nil {
		t.Fatal(err)
	}
	if got := fileSHA(t, head); got != snapHash {
		t.Errorf("volume from the RBD snapshot differs from it")
	}
	c, err := admin.ConnectVolume(ctx, fromQcow, "h1")
	if err != nil || c.Type != "local" || c.Format != "qcow2" {
		t.Fatalf("connection of the qcow2 volume: %+v, %v", c, err)
	}
	if got := rawHash(t, c.Path); got != snapHash {
		t.Errorf("qcow2 volume from the RBD snapshot differs from it")
	}

	// Deletes remove the images and the snapshot.
	for _, id := range []string{fromRBD, fromQcow} {
		if err := dc.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := dc.DeleteSnapshot(ctx, snapID); err != nil {
		t.Fatal(err)
	}
	if err := dc.WaitSnapshotGone(ctx, snapID, time.Minute); err != nil {
		t.Fatal(err)
	}
	l.Wait()
	ls := rbdCLI(t, cl.CephConf, "ls", "rbd")
	if strings.Contains(ls, "volume-"+fromRBD) || !strings.Contains(ls, "volume-"+volID) {
		t.Errorf("rbd ls after the deletes: %s", ls)
	}
	if out := rbdCLI(t, cl.CephConf, "snap", "ls", "rbd/volume-"+volID); strings.Contains(out, "snapshot-"+snapID) {
		t.Errorf("rbd snapshot left after the Cinder snapshot was deleted: %s", out)
	}
}

// TestAppConsistentBackupOfLabWorkloadOnRBD is the whole product against a
// Ceph-backed cloud on libvirt compute hosts: the lab keeps the demo
// workload's volumes as RBD images in a throwaway cluster (libvirt
// attaches them as rbd network disks, as Nova does), its servers are
// libvirt domains booted from root disks, and two app-consistent
// WorkloadBackups run on a real Temporal dev server with control, host
// (--libvirt-uri) and data workers. Discovery gives the volumes rbd:
// locators, so the data worker snapshots them inside the freeze window and
// the second backup reads only the chunks the RBD snapshot diff touches,
// while the root and ephemeral disks go through libvirt checkpoints (full,
// then incremental); each restored volume equals its RBD snapshot (sha256)
// and holds a clean file system with intact records; Restore writes a
// volume into a new RBD volume (sparse), rolls a stopped server's RBD
// volume, root and ephemeral disk back in place (each equal to the
// backup), and recreates a deleted server on a new RBD volume whose guest,
// booted from its restored root disk, finds every record on all three
// disks; no guest is left frozen and no checkpoint metadata or job is left
// on a domain.
func TestAppConsistentBackupOfLabWorkloadOnRBD(t *testing.T) {
	cl := cephlab.Require(t)
	e := newLabEnvWith(t, labEnvOptions{Libvirt: true, RBD: &lab.RBDConfig{CephConf: cl.CephConf}})
	ctx := e.ctx
	conn, err := rbd.Connect(ctx, rbd.Config{CephConf: cl.CephConf})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	volumes := func(b *workflows.BackupResult) map[string]activities.CopyResult {
		out := map[string]activities.CopyResult{}
		for _, d := range b.Disks {
			if name := strings.Split(d.Manifest, "/")[2]; strings.HasPrefix(name, "vol-") {
				out[strings.TrimPrefix(name, "vol-")] = d
			}
		}
		return out
	}
	timed := func(what string) *workflows.BackupResult {
		start := time.Now()
		b := e.backup()
		t.Logf("%s backup %s (%s) in %v: %d VMs, %d disks, read %d KiB, new %d KiB; freeze windows %v; warnings %q",
			what, b.BackupID, b.Consistency, time.Since(start).Round(time.Millisecond), b.VMs, len(b.Disks),
			b.BytesRead>>10, b.BytesNew>>10, b.FreezeWindows, b.Warnings)
		return b
	}

	// checkpoints checks how a backup read each disk: the volumes from
	// RBD snapshots of the backup, the root and ephemeral disks through
	// libvirt checkpoints in the mode given.
	checkpoints := func(b *workflows.BackupResult, mode string) {
		t.Helper()
		r := mustRepo(t, e.be)
		for _, vm := range []string{"demo-1", "demo-2"} {
			for _, disk := range []string{"root", "disk0", "vol-"} {
				d := diskOf(t, b, vm, disk)
				m, err := r.LoadManifest(ctx, d.Manifest)
				if err != nil {
					t.Fatal(err)
				}
				switch {
				case m.Checkpoint == nil:
					t.Errorf("%s: no checkpoint", d.Manifest)
				case disk == "vol-" && (m.Checkpoint.Kind != "rbd-snapshot" || m.Checkpoint.Name != activities.RBDSnapshotName(b.BackupID)):
					t.Errorf("%s: checkpoint %s %s; want the RBD snapshot %s", d.Manifest, m.Checkpoint.Kind, m.Checkpoint.Name, activities.RBDSnapshotName(b.BackupID))
				case disk != "vol-" && (m.Checkpoint.Kind != libvirt.CheckpointKind || m.Checkpoint.Mode != mode):
					t.Errorf("%s: checkpoint %s, mode %q (%s); want a libvirt checkpoint read %s", d.Manifest, m.Checkpoint.Kind, m.Checkpoint.Mode, m.Checkpoint.Reason, mode)
				}
			}
		}
		e.assertClean(t)
	}

	first := timed("first")
	vols1 := volumes(first)
	if first.Consistency != "app" || first.VMs != 2 || len(first.Disks) != 6 || len(vols1) != 2 {
		t.Fatalf("first backup: %+v", first)
	}
	checkpoints(first, "full")
	snap1 := activities.RBDSnapshotName(first.BackupID)
	for id, d := range vols1 {
		if d.Incremental {
			t.Errorf("volume %s: the first backup claims to be incremental", id)
		}
		// The data worker took the snapshot: the volume was read from RBD.
		// Protected, the release after the next backup cannot delete it
		// (a warning), so that the diff can be measured afterwards.
		rbdCLI(t, cl.CephConf, "snap", "protect", "rbd/volume-"+id+"@"+snap1)
	}
	time.Sleep(3 * time.Second) // the in-guest writers go on
	second := timed("second")
	vols2 := volumes(second)
	if second.Consistency != "app" || len(second.Disks) != 6 || len(vols2) != 2 {
		t.Fatalf("second backup: %+v", second)
	}
	checkpoints(second, "incremental")
	if !slices.ContainsFunc(second.Warnings, func(w string) bool { return strings.Contains(w, "release older RBD snapshots") }) {
		t.Errorf("second backup: no warning about the protected snapshots it could not release: %q", second.Warnings)
	}
	snap2 := activities.RBDSnapshotName(second.BackupID)
	chunk := int64(mustRepo(t, e.be).Config().ChunkSize)
	r := mustRepo(t, e.be)
	for id, d := range vols2 {
		img := "volume-" + id
		src, err := conn.OpenSnapshot(ctx, "rbd", img, snap2)
		if err != nil {
			t.Fatal(err)
		}
		ext, err := src.Changed(snap1)
		if err != nil {
			t.Fatal(err)
		}
		var diff int64
		touched := map[int64]bool{}
		for _, x := range ext {
			diff += x.Length
			for c := x.Offset / chunk; c <= (x.Offset+x.Length-1)/chunk; c++ {
				touched[c] = true
			}
		}
		// DESIGN.md: the touched chunks are read whole, less what the
		// snapshot has unallocated.
		alloc, known, err := src.Allocated()
		if err != nil {
			t.Fatal(err)
		}
		var want int64
		for c := range touched {
			if !known {
				want += min(chunk, src.Size()-c*chunk)
				continue
			}
			for _, a := range alloc {
				want += max(0, min(a.Offset+a.Length, (c+1)*chunk, src.Size())-max(a.Offset, c*chunk))
			}
		}
		t.Logf("volume %s: RBD diff %s..%s: %d extents, %d KiB in %d chunks of %d KiB (%d KiB of them allocated); the backup read %d KiB (incremental %v)",
			id, snap1, snap2, len(ext), diff>>10, len(touched), chunk>>10, want>>10, d.BytesRead>>10, d.Incremental)
		if !d.Incremental || d.BytesRead != want || diff == 0 {
			t.Errorf("volume %s: incremental %v, read %d bytes, diff %d bytes; want an incremental reading exactly the allocated bytes of the %d chunks the diff touches (%d)",
				id, d.Incremental, d.BytesRead, diff, len(touched), want)
		}
		// The backup equals the snapshot, and its file system and records
		// are sound.
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(src, 0, src.Size())); err != nil {
			t.Fatal(err)
		}
		src.Close()
		raw := filepath.Join(t.TempDir(), "restored.raw")
		f, err := os.Create(raw)
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(d.Size)
		if _, err := r.RestoreDisk(ctx, d.Manifest, f, repo.RestoreOptions{}); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if got, want := fileSHA(t, raw), fmt.Sprintf("%x", h.Sum(nil)); got != want {
			t.Errorf("volume %s: the restored backup (%s) differs from the RBD snapshot (%s)", id, got, want)
		}
		if out, err := exec.Command("e2fsck", "-fn", raw).CombinedOutput(); err != nil {
			t.Errorf("e2fsck -fn on the restored volume %s: %v\n%s", id, err, out)
		}
		reps, err := guestapp.CheckImage(ctx, raw, guestapp.CheckOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, rep := range reps {
			if !rep.OK() || rep.Good == 0 {
				t.Errorf("restored volume %s: %s", id, rep)
			}
		}
		// Drop the protected older snapshot: one Raksha snapshot is left.
		rbdCLI(t, cl.CephConf, "snap", "unprotect", "rbd/"+img+"@"+snap1)
		if err := conn.DeleteSnapshot(ctx, "rbd", img, snap1); err != nil {
			t.Fatal(err)
		}
		snaps, err := conn.Snapshots(ctx, "rbd", img)
		if err != nil || len(snaps) != 1 || snaps[0].Name != snap2 {
			t.Errorf("snapshots of %s: %+v, %v; want only %s", img, snaps, err, snap2)
		}
	}

	// No guest is left frozen.
	e.assertThawed(t)

	// One volume restored into a new RBD volume.
	dc, err := e.admin.ForProject(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	v2 := diskOf(t, second, "demo-2", "vol-")
	v2ID := strings.TrimPrefix(strings.Split(v2.Manifest, "/")[2], "vol-")
	res, took, err := e.restore("restore/rbd-volume", workflows.RestoreRequest{Repository: "main", BackupID: second.BackupID, Volumes: []string{v2ID}, NamePrefix: "copy-"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Volumes) != 1 {
		t.Fatalf("one-volume restore: %+v", res)
	}
	nc, err := dc.ConnectVolume(ctx, res.Volumes[0].VolumeID, "test")
	if err != nil || nc.Type != "rbd" {
		t.Fatalf("connection of the restored volume: %+v, %v", nc, err)
	}
	if got, want := rbdHash(t, cl.CephConf, nc.Pool+"/"+nc.Image), e.backupHash(v2.Manifest, v2.Size); got != want {
		t.Errorf("volume restored into the new RBD volume %s/%s: %s, backup %s", nc.Pool, nc.Image, got, want)
	}
	// Zeros were discarded, not written: the image stays sparse.
	var du struct {
		Images []struct {
			UsedSize int64 `json:"used_size"`
		} `json:"images"`
	}
	if err := json.Unmarshal([]byte(rbdCLI(t, cl.CephConf, "du", "--format", "json", nc.Pool+"/"+nc.Image)), &du); err != nil || len(du.Images) != 1 {
		t.Fatalf("rbd du: %+v %v", du, err)
	}
	if used := du.Images[0].UsedSize; used > 4*res.BytesFetched+(16<<20) {
		t.Errorf("the restored RBD volume uses %d MiB for %d MiB of chunk data: zeros were written, not discarded", used>>20, res.BytesFetched>>20)
	}
	t.Logf("volume %s restored into the new RBD image %s/%s in %v (%d MiB written, %d KiB fetched, %d KiB allocated)", v2ID, nc.Pool, nc.Image,
		took.Round(time.Millisecond), res.Bytes>>20, res.BytesFetched>>10, du.Images[0].UsedSize>>10)

	// In-place rollback of demo-2, stopped first so that its disks can be
	// compared with the backup: the RBD volume is overwritten by the data
	// worker (zero ranges discarded), the root and ephemeral disks by the
	// host worker.
	d2 := e.serverByName("demo-2")
	if err := e.admin.StopServer(ctx, d2.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.WaitServer(ctx, d2.ID, "SHUTOFF", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	eph2, root2 := diskOf(t, second, "demo-2", "disk0"), diskOf(t, second, "demo-2", "root")
	rootPath, ephPath := e.instanceFiles(t, d2.ID)
	wantVol, wantRoot := e.backupHash(v2.Manifest, v2.Size), e.backupHash(root2.Manifest, root2.Size)
	if rbdHash(t, cl.CephConf, "rbd/volume-"+v2ID) == wantVol {
		t.Fatal("the RBD volume already equals the backup: the writer wrote nothing after it, the rollback test proves nothing")
	}
	if rawHash(t, rootPath) == wantRoot {
		t.Fatal("the root disk already equals the backup: the writer wrote nothing after it, the rollback test proves nothing")
	}
	res, took, err = e.restore("restore/rbd-inplace", workflows.RestoreRequest{Repository: "main", BackupID: second.BackupID, VMs: []string{"demo-2"}, InPlace: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := rbdHash(t, cl.CephConf, "rbd/volume-"+v2ID); got != wantVol {
		t.Errorf("RBD volume after the in-place rollback: %s, backup %s", got, wantVol)
	}
	if got, want := rawHash(t, ephPath), e.backupHash(eph2.Manifest, eph2.Size); got != want {
		t.Errorf("ephemeral disk %s after the in-place rollback: %s, backup %s", ephPath, got, want)
	}
	if got := rawHash(t, rootPath); got != wantRoot {
		t.Errorf("root disk %s after the in-place rollback: %s, backup %s", rootPath, got, wantRoot)
	}
	t.Logf("in-place rollback of demo-2 (RBD volume, root and ephemeral disk, %d MiB) in %v: all three equal the backup", res.Bytes>>20, took.Round(time.Millisecond))
	if err := e.admin.StartServer(ctx, d2.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.WaitServer(ctx, d2.ID, "ACTIVE", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	checkAllDisks(t, "demo-2 after the rollback", "demo-2", e.guestCheck(e.serverByName("demo-2").InstanceRef.Name))

	// A Cinder snapshot of the running guest's volume is an RBD snapshot
	// taken while QEMU holds the image.
	sid, err := dc.CreateSnapshot(ctx, v2ID, cloud.SnapshotOpts{Name: "live", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dc.WaitSnapshot(ctx, sid, time.Minute); err != nil {
		t.Fatal(err)
	}
	if out := rbdCLI(t, cl.CephConf, "snap", "ls", "rbd/volume-"+v2ID); !strings.Contains(out, "snapshot-"+sid) {
		t.Errorf("rbd snap ls after a Cinder snapshot of the attached volume: %s", out)
	}
	if err := dc.DeleteSnapshot(ctx, sid); err != nil {
		t.Fatal(err)
	}
	if err := dc.WaitSnapshotGone(ctx, sid, time.Minute); err != nil {
		t.Fatal(err)
	}

	// demo-1 is deleted and restored: a new server on a new RBD volume,
	// whose guest finds every record of the backup intact.
	if err := e.admin.DeleteServer(ctx, e.serverByName("demo-1").ID); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); len(e.lab.Servers()) > 1 && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
	}
	res, took, err = e.restore("restore/rbd-vm", workflows.RestoreRequest{Repository: "main", BackupID: second.BackupID, VMs: []string{"demo-1"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Servers) != 1 || len(res.Volumes) != 1 {
		t.Fatalf("restore of demo-1: %+v", res)
	}
	if nc, err := dc.ConnectVolume(ctx, res.Volumes[0].VolumeID, "test"); err != nil || nc.Type != "rbd" {
		t.Errorf("connection of demo-1's restored volume: %+v, %v", nc, err)
	}
	if len(res.Disks) != 3 {
		t.Errorf("restore of demo-1 wrote %d disks, want its root, ephemeral disk and volume: %+v", len(res.Disks), res.Disks)
	}
	out := e.guestCheck(res.Servers[0].Instance)
	checkAllDisks(t, "demo-1 restored on a new RBD volume", "demo-1", out)
	t.Logf("demo-1 restored on a new RBD volume in %v; in-guest check:\n%s", took.Round(time.Millisecond), out)
	e.assertThawed(t)
	e.assertClean(t)
}

// TestRBDVolumesReadThroughLibvirt is a Ceph-backed cloud whose operator
// gives Raksha no Ceph access (rbd_volumes: host): no data worker runs and
// no worker has a ceph.conf. The host worker reads the RBD volumes through
// libvirt's pull-mode export like any other disk (libvirt: locators); a
// raw network disk keeps no dirty bitmaps, so each backup reads them in
// full and says why, while the root and ephemeral disks go incremental;
// every restored volume holds a clean file system with intact records.
func TestRBDVolumesReadThroughLibvirt(t *testing.T) {
	cl := cephlab.Require(t)
	e := newLabEnvWith(t, labEnvOptions{Libvirt: true, RBD: &lab.RBDConfig{CephConf: cl.CephConf}, RBDVolumes: "host"})
	ctx := e.ctx
	check := func(b *workflows.BackupResult, mode string) {
		t.Helper()
		if b.Consistency != "app" || len(b.Disks) != 6 {
			t.Fatalf("backup: %+v", b)
		}
		r := mustRepo(t, e.be)
		for _, vm := range []string{"demo-1", "demo-2"} {
			for _, disk := range []string{"root", "disk0", "vol-"} {
				d := diskOf(t, b, vm, disk)
				m, err := r.LoadManifest(ctx, d.Manifest)
				if err != nil {
					t.Fatal(err)
				}
				switch {
				case !strings.HasPrefix(m.Name, "libvirt:"):
					t.Errorf("%s: read from %s, want a libvirt: locator", d.Manifest, m.Name)
				case m.Checkpoint == nil || m.Checkpoint.Kind != libvirt.CheckpointKind:
					t.Errorf("%s: checkpoint %+v, want a libvirt checkpoint", d.Manifest, m.Checkpoint)
				case disk == "vol-" && (m.Checkpoint.Mode != "full" || !strings.Contains(m.Checkpoint.Reason, "no persistent dirty bitmaps")):
					t.Errorf("%s: mode %q (%s); want a full read because the RBD disk keeps no bitmaps", d.Manifest, m.Checkpoint.Mode, m.Checkpoint.Reason)
				case disk != "vol-" && m.Checkpoint.Mode != mode:
					t.Errorf("%s: mode %q (%s); want %s", d.Manifest, m.Checkpoint.Mode, m.Checkpoint.Reason, mode)
				}
				if disk == "vol-" {
					st, files := restoreAndCheck(ctx, t, r, d.Manifest, d.Size, filepath.Join(e.dir, "restored.raw"))
					t.Logf("restored %s (%s): %d MiB; %d record files intact", d.Manifest, m.Checkpoint.Reason, st.BytesWritten>>20, files)
				}
			}
		}
		e.assertClean(t)
	}
	check(e.backup(), "full")
	time.Sleep(2 * time.Second) // the in-guest writers go on
	check(e.backup(), "incremental")
	e.assertThawed(t)
}
