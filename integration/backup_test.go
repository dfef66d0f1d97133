package integration

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
	"github.com/raksha-backup/raksha/internal/testenv/blockvm"
	"github.com/raksha-backup/raksha/workflows"
)

// staticDiscoverer stands in for the cloud in this test only: it reports one
// VM whose disk is the guestless QEMU's drive. (The lab-cloud tests discover
// through the real OpenStack API.)
type staticDiscoverer struct{ vms []activities.VM }

func (d staticDiscoverer) Discover(context.Context, activities.Selector, string) ([]activities.VM, json.RawMessage, error) {
	return d.vms, json.RawMessage(`{"test":"static"}`), nil
}

type memWriter struct{ b []byte }

func (w *memWriter) WriteAt(p []byte, off int64) (int, error) { return copy(w.b[off:], p), nil }

// TestCrashConsistentBackupThroughTemporal runs WorkloadBackup on a real
// Temporal dev server with a real worker (control + host roles) against a
// real QEMU process: a full backup, writes, an incremental that reads only
// the chunks the dirty bitmap touches, and byte-identical restores.
func TestCrashConsistentBackupThroughTemporal(t *testing.T) {
	blockvm.Require(t)
	c, _ := startTemporal(t)
	ctx := context.Background()
	dir := t.TempDir()
	const size = 64 << 20
	hostDir := filepath.Join(dir, "hosts", "h1")
	img := filepath.Join(dir, "vda.qcow2")
	blockvm.CreateImage(t, img, size)
	vm := blockvm.Start(t, img, filepath.Join(hostDir, "instances", "instance-1", "qmp.sock"), make([]byte, size))
	vm.Write(0x11, 0, 3<<20)
	vm.Write(0x22, 20<<20, 1<<20)

	// repository
	pwFile := filepath.Join(dir, "pw")
	os.WriteFile(pwFile, []byte("secret\n"), 0o600)
	be, _ := local.Open(filepath.Join(dir, "repo"))
	if _, err := repo.Init(ctx, be, repo.InitOptions{ChunkSize: 1 << 20, Password: "secret"}, repo.Options{}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	acts := activities.New(activities.Config{
		Repos:   map[string]activities.RepoConfig{"main": {URL: "file://" + filepath.Join(dir, "repo"), PasswordFile: pwFile}},
		HostDir: hostDir, WorkDir: filepath.Join(dir, "work"), Log: log,
		Discoverer: staticDiscoverer{vms: []activities.VM{{ID: "srv-1", Name: "db", Host: "h1", Instance: "instance-1",
			Disks: []activities.Disk{{Name: "vda", Locator: "qemu:h1/instance-1/data0", Size: size}}}}},
	})
	defer activities.Shutdown(ctx, acts)
	startWorkers(t, c, acts, activities.ControlQueue, activities.HostQueue("h1"))
	req := workflows.BackupRequest{Workload: "shop", Repository: "main", Consistency: "crash"}
	run := func() (*workflows.BackupResult, []byte) {
		t.Helper()
		model := append([]byte(nil), vm.Model...)
		start := time.Now()
		wr, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflows.BackupWorkflowID("", "shop"),
			TaskQueue: activities.ControlQueue}, workflows.WorkloadBackup, req)
		if err != nil {
			t.Fatal(err)
		}
		var res workflows.BackupResult
		if err := wr.Get(ctx, &res); err != nil {
			t.Fatal(err)
		}
		t.Logf("backup %s in %v: read %d, new %d, stored %d", res.BackupID, time.Since(start).Round(time.Millisecond), res.BytesRead, res.BytesNew, res.BytesStored)
		return &res, model
	}
	first, model1 := run()
	if first.Consistency != "crash" || len(first.Disks) != 1 || first.Disks[0].Incremental {
		t.Fatalf("first backup %+v", first)
	}
	vm.Write(0x33, 5<<20, 4096)
	vm.Write(0x44, 40<<20, 2<<20)
	second, model2 := run()
	if !second.Disks[0].Incremental {
		t.Fatalf("second backup was not incremental: %+v", second.Disks[0])
	}
	// Chunks 5, 40 and 41 (1 MiB chunks) are touched and read, less what is
	// unallocated in them: chunk 5 holds only the 64 KiB qcow2 cluster of the
	// 4 KiB write. Nothing else is read.
	if want := int64(2<<20 + 64<<10); second.BytesRead != want {
		t.Errorf("incremental read %d bytes, want the allocated part of the 3 touched chunks (%d)", second.BytesRead, want)
	}
	r, err := repo.Open(ctx, be, "secret", repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		res   *workflows.BackupResult
		model []byte
	}{{first, model1}, {second, model2}} {
		w := &memWriter{b: make([]byte, size)}
		if _, err := r.RestoreDisk(ctx, tc.res.Disks[0].Manifest, w, repo.RestoreOptions{}); err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(w.b) != sha256.Sum256(tc.model) {
			t.Errorf("restore of %s differs from the disk at its checkpoint", tc.res.BackupID)
		}
	}
	// One bitmap per disk remains: the newest.
	bms, err := vm.Mon.Bitmaps(ctx, "data0")
	if err != nil || len(bms) != 1 || bms[0].Name != activities.NewBitmapName(second.BackupID) {
		t.Errorf("bitmaps after two backups: %+v %v", bms, err)
	}
	b, err := r.LoadBackup(ctx, second.BackupID)
	if err != nil || b.Labels["workload"] != "shop" || b.Consistency != "crash" || string(b.Source) != `{"test":"static"}` {
		t.Errorf("record %+v %v", b, err)
	}
}
