//go:build ceph

package integration

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"go.temporal.io/sdk/client"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/disk/rbd"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
	"github.com/raksha-backup/raksha/internal/testenv/cephlab"
	"github.com/raksha-backup/raksha/workflows"
)

func TestMain(m *testing.M) { cephlab.Main(m) }

// TestWorkloadBackupWithRBDVolume runs WorkloadBackup through Temporal for a
// VM whose volume is an RBD image on a throwaway Ceph: the data worker
// snapshots it, reads only the snapshot diff the second time, keeps exactly
// one Raksha snapshot, and the restore equals the snapshot.
func TestWorkloadBackupWithRBDVolume(t *testing.T) {
	cl := cephlab.Require(t)
	c, _ := startTemporal(t)
	ctx := context.Background()
	conn, err := rbd.Connect(ctx, rbd.Config{CephConf: cl.CephConf})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const size = 64 << 20
	image := cephlab.UniqueName("vol")
	write := func(off int64, n int) {
		tg, err := conn.OpenTarget(ctx, "rbd", image)
		if err != nil {
			t.Fatal(err)
		}
		defer tg.Close()
		buf := make([]byte, n)
		rand.Read(buf)
		if _, err := tg.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	tg, err := conn.CreateImage(ctx, "rbd", image, size)
	if err != nil {
		t.Fatal(err)
	}
	tg.Close()
	write(0, 4<<20)
	write(30<<20, 2<<20)

	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("secret"), 0o600)
	be, _ := local.Open(filepath.Join(dir, "repo"))
	if _, err := repo.Init(ctx, be, repo.InitOptions{ChunkSize: 1 << 20, Password: "secret"}, repo.Options{}); err != nil {
		t.Fatal(err)
	}
	acts := activities.New(activities.Config{
		Repos:    map[string]activities.RepoConfig{"main": {URL: "file://" + filepath.Join(dir, "repo"), PasswordFile: pw}},
		CephConf: cl.CephConf, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Discoverer: staticDiscoverer{vms: []activities.VM{{ID: "srv-1", Name: "db", Host: "h1", Instance: "i-1",
			Disks: []activities.Disk{{Name: "vol1", Locator: activities.Locator("rbd:rbd/" + image), Size: size}}}}},
	})
	defer activities.Shutdown(ctx, acts)
	startWorkers(t, c, acts, activities.ControlQueue, activities.DataQueue)
	run := func() *workflows.BackupResult {
		t.Helper()
		wr, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.BackupWorkflowID("", "rbd"), TaskQueue: activities.ControlQueue},
			workflows.WorkloadBackup, workflows.BackupRequest{Workload: "rbd", Repository: "main", Consistency: "crash"})
		if err != nil {
			t.Fatal(err)
		}
		var res workflows.BackupResult
		if err := wr.Get(ctx, &res); err != nil {
			t.Fatal(err)
		}
		t.Logf("backup %s: read %d KiB, new %d KiB", res.BackupID, res.BytesRead>>10, res.BytesNew>>10)
		return &res
	}
	first := run()
	if first.Disks[0].Incremental {
		t.Errorf("first backup of the image claims to be incremental")
	}
	write(5<<20+4096, 4096)
	write(40<<20, 1<<20)
	second := run()
	if !second.Disks[0].Incremental || second.BytesRead > 3<<20 {
		t.Errorf("second backup: incremental %v, read %d bytes; want an incremental that reads at most the 3 touched chunks", second.Disks[0].Incremental, second.BytesRead)
	}
	snaps, err := conn.Snapshots(ctx, "rbd", image)
	if err != nil || len(snaps) != 1 || snaps[0].Name != activities.RBDSnapshotName(second.BackupID) {
		t.Errorf("snapshots after two backups: %+v %v; want only %s", snaps, err, activities.RBDSnapshotName(second.BackupID))
	}
	r, err := repo.Open(ctx, be, "secret", repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := conn.OpenSnapshot(ctx, "rbd", image, activities.RBDSnapshotName(second.BackupID))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	want := make([]byte, size)
	if _, err := src.ReadAt(want, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	out := &memWriter{b: make([]byte, size)}
	if _, err := r.RestoreDisk(ctx, second.Disks[0].Manifest, out, repo.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(out.b) != sha256.Sum256(want) {
		t.Fatal("restore differs from the RBD snapshot")
	}
}
