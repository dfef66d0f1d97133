package integration

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/raksha-backup/raksha/activities"
	"github.com/raksha-backup/raksha/internal/disk/file"
	"github.com/raksha-backup/raksha/internal/metrics"
	"github.com/raksha-backup/raksha/internal/metrics/metricstest"
	"github.com/raksha-backup/raksha/internal/repo"
	"github.com/raksha-backup/raksha/internal/repo/backend/local"
	"github.com/raksha-backup/raksha/policies"
	"github.com/raksha-backup/raksha/workflows"
)

// TestMaintenancePolicyExpiresGCsAndVerifies is a maintenance policy's
// schedule on a real dev server: its runs (RepositoryMaintenance workflows
// on the control queue) remove the expired backups of a workload that has no
// policy any more (a protected one stays), move their chunks to the trash and
// purge them on the next run, skip gc while another gc holds the lease, and
// fail, naming the chunk and the backup, when a chunk was deleted.
func TestMaintenancePolicyExpiresGCsAndVerifies(t *testing.T) {
	c, _ := startTemporal(t)
	ctx := context.Background()
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	be, err := local.Open(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := repo.Init(ctx, be, repo.InitOptions{ChunkSize: 64 << 10, Password: "secret", KDF: repo.KDFParams{Time: 1, Memory: 1024, Threads: 1}}, repo.Options{Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	past, future := time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	backup := func(workload string, expires time.Time, chunks int) *repo.Backup {
		t.Helper()
		img := filepath.Join(t.TempDir(), "disk.img")
		data := make([]byte, chunks*64<<10)
		rand.Read(data)
		if err := os.WriteFile(img, data, 0o600); err != nil {
			t.Fatal(err)
		}
		src, err := file.Open(img)
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		s, err := r.StartBackup(ctx, repo.BackupSpec{Labels: map[string]string{"workload": workload}, Expires: &expires})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.BackupDisk(ctx, "vm1", "vda", src, repo.DiskOptions{}); err != nil {
			t.Fatal(err)
		}
		b, err := s.Commit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	expired := backup("gone", past, 5)
	protected := backup("gone", past, 3)
	if _, err := r.UpdateBackup(ctx, protected.ID, func(b *repo.Backup) error { b.Protected = true; return nil }); err != nil {
		t.Fatal(err)
	}
	live := backup("live", future, 4)

	mx, err := metrics.New()
	if err != nil {
		t.Fatal(err)
	}
	verifyFailures := func() float64 {
		t.Helper()
		f, err := metricstest.Gather(mx.Registry())
		if err != nil {
			t.Fatal(err)
		}
		v, _ := f.Value(metrics.VerifyFailures, map[string]string{"repository": "main", "mode": "full"})
		return v
	}
	acts := activities.New(activities.Config{
		Repos: map[string]activities.RepoConfig{"main": {URL: "file://" + repoDir, PasswordFile: pwFile}},
		Log:   quiet, WorkDir: filepath.Join(dir, "work"), Metrics: mx,
	})
	defer activities.Shutdown(ctx, acts)
	startWorkers(t, c, acts, activities.ControlQueue)

	ps, err := policies.Parse("m.yaml", []byte(`kind: maintenance
name: test-maintenance
schedule:
  every: 24h
repository: main
paused: true
maintenance:
  gc_grace: 1s
  verify: full
`))
	if err != nil {
		t.Fatal(err)
	}
	p := ps[0]
	sc := c.ScheduleClient()
	if res, err := policies.Apply(ctx, sc, p); err != nil || res.Action != policies.Created {
		t.Fatalf("apply: %+v, %v", res, err)
	}
	t.Cleanup(func() { policies.Delete(context.Background(), sc, p.Name) })
	runs := 0
	run := func() (*workflows.MaintenanceResult, error) {
		t.Helper()
		time.Sleep(1100 * time.Millisecond) // past the 1 s grace
		if err := policies.Trigger(ctx, sc, p.Name); err != nil {
			t.Fatal(err)
		}
		runs++
		var id string
		eventually(t, 20*time.Second, "the triggered schedule started no maintenance run", func() bool {
			st, err := policies.Show(ctx, sc, p.Name)
			if err != nil {
				t.Fatal(err)
			}
			if len(st.Recent) == runs && st.Recent[runs-1].WorkflowID != "" {
				id = st.Recent[runs-1].WorkflowID
				return true
			}
			return false
		})
		if !strings.HasPrefix(id, "maintenance/main") {
			t.Errorf("maintenance run id %q, want maintenance/main-<time>", id)
		}
		var res workflows.MaintenanceResult
		err := c.GetWorkflow(ctx, id, "").Get(ctx, &res)
		return &res, err
	}

	// 1: the expired backup goes, its 5 chunks go to the trash.
	res, err := run()
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Pruned) != 1 || res.Pruned[0] != expired.ID {
		t.Errorf("run 1 pruned %v, want only the expired unprotected backup %s", res.Pruned, expired.ID)
	}
	if res.GC == nil || res.GC.Trashed != 5 || res.GC.Purged != 0 || res.GC.Referenced != 7 {
		t.Errorf("run 1 gc %+v, want 5 trashed, none purged, 7 referenced", res.GC)
	}
	if res.Verify == nil || res.Verify.Verify == nil || res.Verify.Verify.Backups != 2 || res.Verify.Verify.Chunks != 7 {
		t.Errorf("run 1 verify %+v, want the 2 remaining backups' 7 chunks", res.Verify)
	}
	left, err := r.ListBackups(ctx, repo.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range left {
		ids = append(ids, b.ID)
	}
	sort.Strings(ids)
	want := []string{protected.ID, live.ID}
	sort.Strings(want)
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Errorf("backups left %v, want %v", ids, want)
	}

	// 2: the trashed chunks are purged.
	res, err = run()
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Pruned) != 0 || res.GC == nil || res.GC.Purged != 5 || res.GC.Trashed != 0 {
		t.Errorf("run 2: pruned %v, gc %+v; want nothing pruned, 5 purged", res.Pruned, res.GC)
	}
	if n := countFiles(t, filepath.Join(repoDir, "trash")); n != 0 {
		t.Errorf("%d objects left in the trash", n)
	}

	// 3: another gc holds the lease: gc is skipped, the run still verifies.
	lease := filepath.Join(repoDir, "gc", "lease", "other-run")
	if err := os.MkdirAll(filepath.Dir(lease), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lease, []byte(`{"run":"other-run","host":"elsewhere","pid":4242}`), 0o600); err != nil {
		t.Fatal(err)
	}
	res, err = run()
	if err != nil {
		t.Fatal(err)
	}
	if res.GC != nil || !strings.Contains(res.GCSkipped, "another gc is running") || !strings.Contains(res.GCSkipped, "elsewhere") {
		t.Errorf("run 3 with a live lease: gc %+v, skipped %q; want it skipped naming the holder", res.GC, res.GCSkipped)
	}
	if err := os.Remove(lease); err != nil {
		t.Fatal(err)
	}

	// 4: a chunk of the live backup deleted: the run fails naming it and the backup.
	m, err := r.LoadManifest(ctx, live.Disks[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	var victim string
	err = r.ForEachChunk(ctx, m, func(i int64, id repo.ChunkID) error {
		if i == 2 {
			victim = id.String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(repoDir, "chunks", victim[:2], victim)); err != nil {
		t.Fatal(err)
	}
	if v := verifyFailures(); v != 0 {
		t.Errorf("%v verify failures counted after three clean runs", v)
	}
	_, err = run()
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) || ae.Type() != activities.ErrVerifyFailed || !strings.Contains(err.Error(), victim) || !strings.Contains(err.Error(), live.ID) {
		t.Fatalf("run 4 after deleting chunk %s of backup %s: %v; want VerifyFailed naming both", victim, live.ID, err)
	}
	if strings.Contains(err.Error(), protected.ID) {
		t.Errorf("run 4 names the intact backup %s: %v", protected.ID, err)
	}
	t.Logf("run 4 failed as it should: %v", err)
	if v := verifyFailures(); v != 1 {
		t.Errorf("%s = %v after the failed verify, want 1", metrics.VerifyFailures, v)
	}
}

func countFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if !info.IsDir() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
